"""Collectives in the graphs XLA compiles: what SPMD inserts, counted from XLA's own dump.

torch_xla 2.9's metrics (`torch_xla.debug.metrics`) count a collective only when Python code calls
one (xm.all_reduce and friends): under SPMD the partitioner inserts them inside the compiled program,
where no counter sees them (a 2-device SPMD training step shows no collective among its counters).
XLA can dump every program it compiles (`XLA_FLAGS=--xla_dump_to=DIR`), after partitioning and
optimization: this counts the collective instructions in the programs compiled by training steps.
Our own code because neither torch_xla nor Lightning reports them. XLA:CPU names the file
`*.cpu_after_optimizations.txt`; a TPU would write `*.tpu_after_optimizations.txt`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytorch_lightning as pl

OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
#: an instruction, e.g. `%all-reduce.1 = f32[] all-reduce(%x), ...`; async pairs count once (-start)
_INSTRUCTION = re.compile(r"\s(" + "|".join(OPS) + r")(?:-start)?\(")


def dump_to(folder: Path) -> bool:
    """Have XLA dump each compiled program as text into `folder`. Only before torch_xla's runtime
    starts (XLA reads its flags once): returns False when it is too late in this process, or when
    torch_xla is missing (the run then stops with the hardware check's one line)."""
    import importlib.util

    if importlib.util.find_spec("torch_xla") is None:
        return False
    import torch_xla

    if torch_xla._XLAC._xla_runtime_is_initialized():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={folder} --xla_dump_hlo_as_text".strip()
    return True


def programs(folder: Path) -> list[Path]:
    """The compiled programs dumped so far, in compile order (XLA numbers them module_0000, ...)."""
    return sorted(p for p in folder.glob("module_*after_optimizations.txt"))


def count(program: Path) -> dict[str, int]:
    """Collective instructions in one compiled program, by kind (kinds that do not occur are left out)."""
    found: dict[str, int] = {}
    for op in _INSTRUCTION.findall(program.read_text()):
        found[op] = found.get(op, 0) + 1
    return found


class CollectiveWatch(pl.Callback):
    """Collectives in the programs compiled by the training steps of the first epoch.

    The graph compiled by the second training step is the one every later full batch runs (the first
    step's graph also creates the optimizer state; CompileWatch checks nothing compiles after warm-up),
    so its collectives are the per-step collectives of the steady state.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.by_step: dict[int, dict[str, int]] = {}
        self._before = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self._before = len(programs(self.folder))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch != 0:
            return
        compiled = programs(self.folder)[self._before:]
        if compiled:
            total: dict[str, int] = {}
            for program in compiled:
                for op, n in count(program).items():
                    total[op] = total.get(op, 0) + n
            self.by_step[batch_idx] = total

    def report(self) -> dict:
        return {
            "collectives_per_step": self.by_step.get(1),
            "collectives_by_compiling_step": {str(step): ops for step, ops in sorted(self.by_step.items())},
            "collectives_source": "XLA's dump of the compiled programs (torch_xla 2.9's metrics do not count "
                                  "the collectives SPMD inserts)",
        }

    def remove_dump(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
