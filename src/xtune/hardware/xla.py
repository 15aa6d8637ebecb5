"""All XLA-specific code (TPU, and XLA on CPU for readiness checks) lives in this module.

A future native TPU backend replaces this file; nothing else imports torch_xla.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import XLAAccelerator


def sync() -> None:
    """Cut the lazy graph here and run it (torch_xla.sync, xm.mark_step before 2.7)."""
    import torch_xla

    if hasattr(torch_xla, "sync"):
        torch_xla.sync()
    else:  # pragma: no cover - older torch_xla
        import torch_xla.core.xla_model as xm

        xm.mark_step()


class XLACPUAccelerator(XLAAccelerator):
    """Lightning's XLA accelerator on the XLA:CPU device (PJRT_DEVICE=CPU), single device.

    Lightning's XLAAccelerator only looks for TPU chips; overriding device discovery is enough to
    run its real SingleDeviceXLAStrategy + XLAPrecision on a laptop. XLA:CPU collectives are
    unsupported upstream (pytorch/xla #5005, #9089), hence one device.
    """

    def __init__(self, *args, **kwargs):
        os.environ.setdefault("PJRT_DEVICE", "CPU")
        super().__init__(*args, **kwargs)

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def parse_devices(devices) -> int:
        return 1

    @staticmethod
    def get_parallel_devices(devices) -> list:
        return [torch.device("xla", 0)]


class SyncEachEvalBatch(pl.Callback):
    """On one XLA device Lightning never cuts the graph during validation/test, so the whole
    evaluation epoch would become one graph, compiled anew at the next sync. Cut it per batch."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        sync()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        sync()


@dataclass
class Counters:
    """A snapshot of torch_xla's debug counters."""

    compiles: int = 0
    executions: int = 0
    host_transfers: int = 0
    item_calls: int = 0
    fallback_ops: list = field(default_factory=list)

    @classmethod
    def now(cls) -> "Counters":
        import torch_xla.debug.metrics as met

        def count(name: str) -> int:
            return int(met.counter_value(name) or 0)

        def metric_count(name: str) -> int:
            data = met.metric_data(name)
            return int(data[0]) if data else 0

        return cls(
            compiles=count("UncachedCompile"),
            executions=metric_count("ExecuteTime"),
            host_transfers=metric_count("TransferFromDeviceTime"),
            item_calls=count("aten::_local_scalar_dense"),
            fallback_ops=sorted(met.executed_fallback_ops()),
        )

    def minus(self, other: "Counters") -> dict:
        return {
            "compiles": self.compiles - other.compiles,
            "executions": self.executions - other.executions,
            "host_transfers": self.host_transfers - other.host_transfers,
            "item_calls": self.item_calls - other.item_calls,
        }


class CompileWatch(pl.Callback):
    """Counts XLA compilations and host transfers per epoch (validation included): what
    xtune-xla-check reports.

    Warm-up is the first `warmup_epochs` epochs: the first compiles the step graphs (the first
    optimizer step differs: its state is created), the second the graphs that start from an
    epoch boundary (freshly reset metric states are constants to XLA). After that, every graph
    must come from the cache.
    """

    def __init__(self, warmup_epochs: int = 2):
        self.warmup_epochs = warmup_epochs
        self.snapshots: list[Counters] = []
        self.steps: list[int] = []
        self.in_steps: list[dict] = []  # per epoch: what happened inside training steps
        self._before_step: Counters | None = None

    def on_fit_start(self, trainer, pl_module):
        self.snapshots = [Counters.now()]
        self.steps, self.in_steps = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.steps.append(0)
        self.in_steps.append({"compiles": 0, "executions": 0, "host_transfers": 0, "item_calls": 0})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before_step = Counters.now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1] += 1
        for key, value in Counters.now().minus(self._before_step).items():
            self.in_steps[-1][key] += value

    def on_train_epoch_end(self, trainer, pl_module):
        # an epoch's validation runs before this hook, so it counts with its epoch
        sync()
        self.snapshots.append(Counters.now())

    def report(self) -> dict:
        if len(self.snapshots) < 2:
            return {}
        epochs = [after.minus(before) for before, after in zip(self.snapshots, self.snapshots[1:])]
        steady = epochs[self.warmup_epochs:]
        steady_steps = sum(self.steps[self.warmup_epochs:])
        steady_in = self.in_steps[self.warmup_epochs:]
        total = lambda key, rows: sum(row[key] for row in rows)  # noqa: E731
        fallbacks = sorted(set(self.snapshots[-1].fallback_ops))
        return {
            "device": pl_device_type(),
            "graphs_compiled": total("compiles", epochs),
            "compiles_per_epoch": [row["compiles"] for row in epochs],
            "warmup_epochs": self.warmup_epochs,
            "steady_state_epochs": len(steady),
            "steady_state_steps": steady_steps,
            "recompiles_after_warmup": total("compiles", steady),
            # inside training steps (what slows a TPU down) and at epoch ends (logging, validation)
            "host_transfers_per_step": round(total("host_transfers", steady_in) / max(steady_steps, 1), 3),
            "item_calls_per_step": round(total("item_calls", steady_in) / max(steady_steps, 1), 3),
            "host_transfers_per_epoch_outside_steps": round(
                (total("host_transfers", steady) - total("host_transfers", steady_in)) / max(len(steady), 1), 1),
            "fallback_ops": fallbacks,
            "unexpected_fallback_ops": [op for op in fallbacks if op not in EXPECTED_FALLBACKS],
        }


#: ops that fall back to the CPU in every Lightning run (reading a scalar for logging)
EXPECTED_FALLBACKS = ("aten::_local_scalar_dense",)


def pl_device_type() -> str:
    import torch_xla.runtime as xr

    return xr.device_type()


