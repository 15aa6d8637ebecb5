"""The framework imports leave the cyclic GC on, with what they created frozen out of its way."""

import subprocess
import sys

import pytest

CHILD = """
import gc
from xtune.imports import import_framework
import_framework()
frozen = gc.get_freeze_count()
import_framework()  # a later job of an in-process sweep: nothing more is frozen
print(frozen, gc.get_freeze_count(), gc.isenabled())
"""


def test_framework_imports_are_frozen_once_and_the_gc_stays_on():
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second, enabled = result.stdout.split()
    assert int(first) > 100_000  # torch, timm and Lightning: a few hundred thousand objects and more
    assert int(second) == int(first)
    assert enabled == "True"


DEFERRED_CHILD = """
import sys
from xtune.imports import import_framework
import_framework()
print(sorted(name for name in ("scipy.signal", "transformers") if name in sys.modules))
import scipy.signal  # the real module now, with what torchmetrics's stand-in never had to load
print(scipy.signal.welch.__module__)
import torchmetrics.functional.text.bert as bert  # its name bound at import resolves on first use
print(bert.AutoModel.from_pretrained.__qualname__)
import transformers
print(type(transformers).__name__)
"""


def test_torchmetrics_optional_imports_wait_until_used():
    pytest.importorskip("transformers")  # the [lora] extra
    result = subprocess.run([sys.executable, "-c", DEFERRED_CHILD], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded, welch, from_pretrained, transformers = result.stdout.split("\n")[:4]
    assert loaded == "[]"  # neither was imported by the framework imports
    assert welch == "scipy.signal._spectral_py"
    assert from_pretrained == "_BaseAutoModelClass.from_pretrained"
    assert transformers == "_LazyModule"  # transformers' own module type: the real package


def test_a_deferred_name_that_is_not_installed_still_fails_to_import():
    from xtune.imports import deferred

    with deferred(["xtune_no_such_package"]):
        with pytest.raises(ModuleNotFoundError):
            import xtune_no_such_package  # noqa: F401
