"""Data: one ImageDataModule fed by small source functions (digits, imagefolder, mnist, ...).

`xtune.data.sources` stays light (numpy only): validation reads a source function's signature
before the framework is imported. ImageDataModule (Lightning) loads on first use, after
`xtune.imports.import_framework` has imported Lightning its fast way.
"""

from xtune.data.sources import Source

__all__ = ["ImageDataModule", "Source"]


def __getattr__(name: str):
    if name == "ImageDataModule":
        from xtune.data.datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module 'xtune.data' has no attribute {name!r}")
