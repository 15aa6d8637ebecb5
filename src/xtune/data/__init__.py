"""Data: one ImageDataModule fed by small source functions (digits, imagefolder, mnist, ...)."""

from xtune.data.datamodule import ImageDataModule
from xtune.data.sources import Source

__all__ = ["ImageDataModule", "Source"]
