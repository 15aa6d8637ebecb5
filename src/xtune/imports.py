"""The framework imports (torch, timm, Lightning) of a run, with Python's cyclic GC kept off them.

Importing torch, timm and Lightning creates a few million long-lived objects. CPython's full
collections, triggered while they are created, traverse all of them again and again: ~1.3 s of a
2-core machine's start-up (measured: eight full collections during the imports, none during
training). And at exit the interpreter collects them once more before tearing the modules down
(~2 s). Pausing the collector for the imports and then freezing what they created
(`gc.freeze`: never traversed again) removes both; objects made afterwards (a training loop's
garbage) are collected as usual.
"""

from __future__ import annotations

import gc


def import_framework() -> None:
    """Import what every training or evaluation run needs, then freeze it out of the GC's way.

    Only the first call of a process freezes: a later job of an in-process sweep finds the
    modules imported, and freezing then would also keep the earlier jobs' garbage forever.
    """
    import sys

    if "pytorch_lightning" in sys.modules and "timm" in sys.modules:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        import pytorch_lightning  # noqa: F401  (imports torch and torchmetrics)
        import timm  # noqa: F401  (imports torchvision)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
