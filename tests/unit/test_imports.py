"""The framework imports leave the cyclic GC on, with what they created frozen out of its way."""

import subprocess
import sys

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
