"""xtune's own Lightning callbacks, for what Lightning does not do itself.

- RunStats: per-epoch history, best epoch and end-to-end training images/s for summary.json
  (Lightning's ThroughputMonitor synchronises the device every step and only logs; we want one
  honest number per run without slowing it).
- FiniteLoss: abort loudly on a non-finite training loss (checked every n steps, so it costs one
  host sync per n steps instead of one per step).
- StoreRunInfo: puts the resolved config and class names into every checkpoint, so eval.py and
  resume need nothing else.
- EMAWeightAveraging: Lightning's, with the test of the best checkpoint run on its averaged weights.
"""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl

from xtune.errors import XtuneError


class NonFiniteLossError(XtuneError):
    """Training diverged."""


def _scalars(trainer) -> dict:
    return {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}


class RunStats(pl.Callback):
    def __init__(self, monitor: str = "val/acc", mode: str = "max", warmup_steps: int = 3):
        self.monitor, self.mode, self.warmup_steps = monitor, mode, warmup_steps
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.images = 0
        self.seconds = 0.0
        self._steps = 0
        self._last: float | None = None
        self.first_step_at: float | None = None  # wall clock (time.time) of the first training step
        self.last_step_at: float | None = None
        self.memory: dict = {}
        self.fit_metrics: dict = {}  # the fit's scalar metrics: at its end, or at its last checkpoint

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last_step_at = time.time()
        now = time.perf_counter()
        self._steps += 1
        if self._last is not None and self._steps > self.warmup_steps:
            self.images += int(batch[0].shape[0]) * trainer.world_size
            self.seconds += now - self._last
        self._last = now

    def on_validation_end(self, trainer, pl_module) -> None:
        # after the module's epoch-end logging: this epoch's val metrics are in callback_metrics
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        score = float(score)
        better = self.best_score is None or (score > self.best_score if self.mode == "max" else score < self.best_score)
        if better and math.isfinite(score):
            self.best_score, self.best_epoch = score, trainer.current_epoch
        self._record(trainer, trainer.current_epoch)

    # The module logs its train metrics in its own on_train_epoch_end, which Lightning calls after
    # this callback's and before the checkpoint callbacks': so an epoch's row is filled in at every
    # point where it may be complete (merging, never erasing), and a checkpoint holds it whole.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._record(trainer, trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = None  # time between epochs (validation) is not training time
        if trainer.current_epoch > 0:
            self._record(trainer, trainer.current_epoch - 1)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self._record(trainer, trainer.current_epoch - 1)
        self.fit_metrics = _scalars(trainer) or self.fit_metrics  # none logged: a resumed, finished fit

    def _record(self, trainer, epoch: int) -> None:
        values = {key: value for key, value in _scalars(trainer).items()
                  if key.startswith(("train/", "val/")) and not key.endswith("_step")}
        if not values:
            return
        if self.history and self.history[-1]["epoch"] == epoch:
            self.history[-1].update(values)
        elif not self.history or self.history[-1]["epoch"] < epoch:
            self.history.append({"epoch": epoch, **values})

    def on_train_start(self, trainer, pl_module) -> None:
        try:  # reset the process's peak resident memory (Linux), to read the fit's own peak later
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass

    def on_train_end(self, trainer, pl_module) -> None:
        from xtune.hardware.throughput import memory_report

        self.memory = memory_report(trainer, pl_module)

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            epochs = trainer.fit_loop.epoch_progress.current
            if epochs.processed > epochs.completed:  # in on_train_epoch_end: the epoch's metrics are all in
                self._record(trainer, trainer.current_epoch)
            elif epochs.started == epochs.completed and trainer.current_epoch > 0:  # a stop after an epoch's end
                self._record(trainer, trainer.current_epoch - 1)
            # else inside an epoch (a stop, a checkpoint every n steps): the metrics are the last epoch's

            # kept for a run resumed with its fit done (stopped while testing), which logs none
            self.fit_metrics = _scalars(trainer)
        checkpoint["xtune_run_stats"] = {
            "history": self.history, "best_epoch": self.best_epoch, "best_score": self.best_score,
            "fit_metrics": self.fit_metrics,
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Only a resumed fit continues the history; testing the best checkpoint must not rewind it.
        state = checkpoint.get("xtune_run_stats")
        if state and trainer.state.fn == "fit":
            self.history = list(state["history"])
            self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]
            self.fit_metrics = dict(state.get("fit_metrics", {}))


class FiniteLoss(pl.Callback):
    def __init__(self, check_every_n_steps: int = 50):
        self.every = check_every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every and batch_idx:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        # read the (already computed) value on the host: a device-side isfinite() would add a graph
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss became {value} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; lower optim.lr, add gradient clipping "
                "(trainer.gradient_clip_val=1.0) or use trainer.precision=32-true"
            )


class StoreRunInfo(pl.Callback):
    def __init__(self, config: dict, classes: list, data_config: dict, weight_source: str, data: dict | None = None):
        self.info = {
            "config": config,
            "classes": list(classes),
            "data": data,  # the data's fingerprint (xtune.data.ImageDataModule.fingerprint)
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
            "weight_source": weight_source,
        }

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["xtune"] = self.info


class ReseedEveryStep(pl.Callback):
    """Seed Python, NumPy and torch from (seed, batch index, rank) before every training batch.

    A resumed run does not get the global RNG state back (and the RNG is consumed between
    hooks), so augmentation in the main process, mixup and dropout / drop-path would draw other
    numbers than the uninterrupted run. Seeding from the batch index makes them functions of
    where the run is, so a resumed run continues the same curve. DataLoader workers get their
    seeds from the epoch-seeded loader generator (xtune.data.datasets.EpochShuffle).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def _reseed(self, trainer, position: int) -> None:
        import random

        import numpy as np
        import torch

        value = (self.seed * 1_000_003 + position * 7_919 + trainer.global_rank * 104_729) % (2**31 - 1)
        random.seed(value)
        np.random.seed(value)
        # torch.manual_seed would also queue a lazy seed (with a formatted stack trace) for every
        # accelerator backend torch was built with, at every step, even with no such device;
        # seed the CPU generator and the accelerator that is in use
        torch.default_generator.manual_seed(value)
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(value)
        elif torch.backends.mps.is_available():
            torch.mps.manual_seed(value)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # the epoch's first batches are loaded before on_train_batch_start of batch 0
        self._reseed(trainer, 10**7 + trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._reseed(trainer, trainer.fit_loop.epoch_loop.total_batch_idx)


class EMAWeightAveraging(pl.callbacks.EMAWeightAveraging):
    """Lightning's EMA of the weights, tested as saved.

    A checkpoint holds the averaged weights as its state_dict (what eval.py and the export read)
    and the live ones beside them. Lightning's hook loads the live ones back into the model on
    every load once the fit has built its averaged model, so testing best.ckpt after the fit, in
    the same Trainer, scored the live weights. Outside the fit the averaged weights stay.
    """

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
