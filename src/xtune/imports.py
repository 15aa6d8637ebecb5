"""The framework imports (torch, timm, Lightning) of a run, with Python's cyclic GC kept off them.

Importing torch, timm and Lightning creates a few million long-lived objects. CPython's full
collections, triggered while they are created, traverse all of them again and again: ~1.3 s of a
2-core machine's start-up (measured: eight full collections during the imports, none during
training). And at exit the interpreter collects them once more before tearing the modules down
(~2 s). Pausing the collector for the imports and then freezing what they created
(`gc.freeze`: never traversed again) removes both; objects made afterwards (a training loop's
garbage) are collected as usual.

Lightning imports torchmetrics, and `import torchmetrics` imports two heavy optional packages
whenever they are installed, though nothing on that path uses them: `scipy.signal` (a
back-compatibility patch for a test-only package) and `transformers` (BERTScore and CLIP metrics;
installed with the [lora] extra, as peft needs it). That is ~1.8 s and ~1.1 s of a 2-core
machine's start-up (upstream: Lightning-AI/torchmetrics#3457). While the framework imports, the
two are served as stand-ins whose names resolve to the real objects on first use; afterwards they
leave `sys.modules`, so a later `import transformers` (peft, for LoRA) or `import scipy.signal`
loads the real package as usual.
"""

from __future__ import annotations

import gc
import importlib
import importlib.abc
import importlib.util
import sys
import types
from contextlib import contextmanager

# Imported eagerly by `import torchmetrics` and unused by it until a metric that needs them runs.
DEFERRED = ("scipy.signal", "transformers")


def import_framework() -> None:
    """Import what every training or evaluation run needs, then freeze it out of the GC's way.

    Only the first call of a process freezes: a later job of an in-process sweep finds the
    modules imported, and freezing then would also keep the earlier jobs' garbage forever.
    """
    if "pytorch_lightning" in sys.modules and "timm" in sys.modules:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        with deferred(DEFERRED):
            import pytorch_lightning  # noqa: F401  (imports torch and torchmetrics)
        import timm  # noqa: F401  (imports torchvision)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class _Deferred:
    """`module.attr` as a name bound at import time: it is looked up, importing `module`, when used."""

    def __init__(self, module: str, attr: str):
        self._where = (module, attr)

    def _resolve(self):
        module, attr = self._where
        return getattr(importlib.import_module(module), attr)

    def __getattr__(self, name):
        return getattr(self._resolve(), name)

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return "<deferred {}.{}>".format(*self._where)


class _StandIn(types.ModuleType):
    """A module that is not loaded yet: each attribute read from it is a `_Deferred`."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Deferred(self.__name__, attr)


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in self.names else None

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module):
        pass


@contextmanager
def deferred(names):
    """Within the block, importing one of `names` (installed, not yet imported) gives a stand-in;
    after it, none is left behind. Names that are not installed stay so (their import fails)."""
    finder = _StandInFinder(name for name in names if name not in sys.modules
                            and importlib.util.find_spec(name.partition(".")[0]) is not None)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in finder.names:
            if isinstance(sys.modules.get(name), _StandIn):
                del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and isinstance(getattr(sys.modules[parent], child, None), _StandIn):
                delattr(sys.modules[parent], child)
