"""All XLA-specific code (TPU, and XLA on CPU for readiness checks) lives in this module.

A future native TPU backend replaces this file; nothing else imports torch_xla.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import XLAAccelerator


def tpu_attached() -> bool:
    """Does Lightning see TPU chips on this machine?"""
    return XLAAccelerator.is_available()


def version() -> str:
    import torch_xla

    return torch_xla.__version__


def device():
    """The default XLA device of this process."""
    import torch_xla

    return torch_xla.device()


def device_name(cpu_name: str) -> str:
    """'TPU v5 lite' etc. from the TPU VM's accelerator type, or 'XLA:CPU (...)' off a TPU."""
    import torch_xla.runtime as xr

    if xr.device_type() != "TPU":
        return f"XLA:{xr.device_type()} ({cpu_name})"
    accelerator = os.environ.get("TPU_ACCELERATOR_TYPE", "")  # e.g. v5litepod-8, v4-32, v6e-8
    generation = accelerator.split("-")[0].replace("litepod", " lite").replace("pod", "")
    return f"TPU {generation}".strip() if generation else "TPU"


def sync() -> None:
    """Cut the lazy graph here and run it (torch_xla.sync, xm.mark_step before 2.7)."""
    import torch_xla

    if hasattr(torch_xla, "sync"):
        torch_xla.sync()
    else:  # pragma: no cover - older torch_xla
        import torch_xla.core.xla_model as xm

        xm.mark_step()


def wait() -> None:
    """Block until the device has run everything queued."""
    import torch_xla.core.xla_model as xm

    xm.wait_device_ops()


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
    """Cut the XLA graph where Lightning does not, on one device.

    Lightning cuts it after each optimizer step only. Without a cut per validation/test batch the
    whole evaluation epoch becomes one graph, compiled anew at the next sync; and the epoch-end
    work (metric compute and reset, best-score update) would ride along with the next training
    step, giving that step a graph of its own to compile.
    """

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        sync()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        sync()

    def on_validation_end(self, trainer, pl_module):
        sync()

    def on_train_epoch_start(self, trainer, pl_module):
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
    """Counts XLA compilations and host transfers: what xtune-xla-check reports.

    Compilations are split into those inside training/validation steps (large graphs, paid
    every step if they recur) and those at epoch boundaries (metric compute/reset, logging:
    small graphs). Steps settle after the first epoch (its first optimizer step creates the
    optimizer state; a ragged last batch compiles once). Boundary graphs take a few epochs to
    settle, because values that start as constants become device data. Steady state means: no
    step compiles after `warmup_epochs`, and no compiles at all in the last epoch.
    """

    def __init__(self, warmup_epochs: int = 1):
        self.warmup_epochs = warmup_epochs
        self.snapshots: list[Counters] = []
        self.steps: list[int] = []
        self.in_steps: list[dict] = []  # per epoch: what happened inside training/validation steps
        self.in_train_steps: list[dict] = []
        self._before: Counters | None = None

    def on_fit_start(self, trainer, pl_module):
        self.snapshots = [Counters.now()]
        self.steps, self.in_steps, self.in_train_steps = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.steps.append(0)
        self.in_steps.append(dict.fromkeys(("compiles", "executions", "host_transfers", "item_calls"), 0))
        self.in_train_steps.append(dict(self.in_steps[-1]))

    def _start(self):
        self._before = Counters.now()

    def _end(self, train: bool):
        if not self.in_steps:  # the sanity check before the first epoch
            return
        for key, value in Counters.now().minus(self._before).items():
            self.in_steps[-1][key] += value
            if train:
                self.in_train_steps[-1][key] += value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1] += 1
        self._end(train=True)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._end(train=False)

    def on_train_epoch_end(self, trainer, pl_module):
        # an epoch's validation runs before this hook, so it counts with its epoch
        sync()
        self.snapshots.append(Counters.now())

    def report(self) -> dict:
        if len(self.snapshots) < 2:
            return {}
        epochs = [after.minus(before) for before, after in zip(self.snapshots, self.snapshots[1:])]
        step_compiles = [row["compiles"] for row in self.in_steps[: len(epochs)]]
        boundary_compiles = [row["compiles"] - steps for row, steps in zip(epochs, step_compiles)]
        steady_train = self.in_train_steps[self.warmup_epochs: len(epochs)]
        steady_steps = sum(self.steps[self.warmup_epochs: len(epochs)])
        total = lambda key, rows: sum(row[key] for row in rows)  # noqa: E731
        fallbacks = sorted(set(self.snapshots[-1].fallback_ops))
        return {
            "device": pl_device_type(),
            "graphs_compiled": total("compiles", epochs),
            "compiles_per_epoch": [row["compiles"] for row in epochs],
            "step_compiles_per_epoch": step_compiles,
            "boundary_compiles_per_epoch": boundary_compiles,
            "warmup_epochs": self.warmup_epochs,
            "steady_state_steps": steady_steps,
            "recompiles_after_warmup": sum(step_compiles[self.warmup_epochs:]) + boundary_compiles[-1],
            "host_transfers_per_step": round(total("host_transfers", steady_train) / max(steady_steps, 1), 3),
            "item_calls_per_step": round(total("item_calls", steady_train) / max(steady_steps, 1), 3),
            "host_transfers_per_epoch_outside_training_steps": round(
                (total("host_transfers", epochs[self.warmup_epochs:]) - total("host_transfers", steady_train))
                / max(len(epochs) - self.warmup_epochs, 1), 1),
            "fallback_ops": fallbacks,
            "unexpected_fallback_ops": [op for op in fallbacks if op not in EXPECTED_FALLBACKS],
        }


#: ops that fall back to the CPU in every Lightning run (reading a scalar for logging)
EXPECTED_FALLBACKS = ("aten::_local_scalar_dense",)


def pl_device_type() -> str:
    import torch_xla.runtime as xr

    return xr.device_type()


