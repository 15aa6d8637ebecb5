"""Preemption is normal: stop at a step boundary, save, let the cluster requeue, resume exactly.

- checkpoints are written atomically (`xtune.hardware.checkpoint_io`), so a kill during a write
  leaves the previous `last.ckpt` intact.
- `GracefulStop`: SIGUSR1 / SIGUSR2 (SLURM's and submitit's preemption and time-limit signals)
  and Ctrl-C make Lightning stop after the current batch, as it already does for SIGTERM; the
  callback then saves `checkpoints/last.ckpt` and, for SLURM's signals, hands the signal to
  whoever handled it before (submitit requeues the job; under a plain sbatch job it requeues
  itself with scontrol). A second Ctrl-C stops at once, keeping the last checkpoint. A stop
  during the epoch's validation resumes by running that validation again; a stop while testing
  keeps the fit's last.ckpt.
- `ResumeMidEpoch`: a checkpoint taken mid-epoch records how many batches of the epoch were
  done; on resume the epoch-seeded sampler skips exactly those, so the run continues with the
  batches it would have seen. It also keeps early stopping's decision, which Lightning does not.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.utilities.exceptions import SIGTERMException

from xtune.config.resolvers import in_submitit

log = logging.getLogger("xtune")


class GracefulStop(pl.Callback):
    """Stop on SIGTERM/SIGUSR1/SIGUSR2/SIGINT after the current batch, save last.ckpt, requeue."""

    SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
    REQUEUE = (signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, checkpoint_dir: str):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.received: int | None = None
        self.saved: Path | None = None  # the checkpoint to continue from after an interruption
        self.kept = False  # True when that is the fit's own last.ckpt (a stop while testing)
        self._mid_validation = False
        self._after_validation = False
        self._validated_at: int | None = None  # the step of the fit's last finished validation
        self._previous: dict = {}
        self._trainer = None

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning registered its own handlers (SIGTERM), so ours wrap them; the test of
        # the best checkpoint that follows the fit is a stage of its own
        if self._previous:
            return
        self._trainer = trainer
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    on_test_start = on_train_start

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now; the last saved checkpoint stays
        hint = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        log.warning("received %s: stopping after this batch to save a checkpoint%s", signal.Signals(signum).name, hint)
        self.received = signum
        # the flag Lightning checks after every batch (it raises SIGTERMException at the boundary)
        self._trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not isinstance(exception, SIGTERMException):
            # a crash or a second Ctrl-C (mid-step): keep the last good checkpoint rather than
            # save a state that no uninterrupted run would have had
            return
        path = self.checkpoint_dir / "last.ckpt"
        if trainer.state.fn != "fit" and path.exists():
            # stopped while testing: the fit's own end-of-training last.ckpt is where to continue
            # (the model now holds the best checkpoint's weights, not the last)
            self.saved, self.kept = path, True
            log.warning("interrupted while testing: the run continues from %s", path)
            self._requeue()
            return
        # Stopped between two validation batches: the epoch's training is done, its validation not.
        self._mid_validation = trainer.validating and not trainer.sanity_checking
        # Stopped right after a validation inside the epoch (val_check_interval < 1): on resume
        # Lightning skips that batch's validation but counts the batch again for the loggers' step.
        self._after_validation = (not trainer.validating and self._validated_at == trainer.global_step
                                  and trainer.fit_loop.epoch_loop.batch_progress.current.completed
                                  < trainer.num_training_batches)
        if self._mid_validation:
            for callback in trainer.callbacks:
                if isinstance(callback, WeightAveraging):  # EMA: the live weights back in the model
                    callback.on_validation_epoch_end(trainer, pl_module)
        trainer.save_checkpoint(path)
        self._mid_validation = self._after_validation = False
        self.saved = path
        log.warning("interrupted at epoch %d, step %d: saved %s", trainer.current_epoch, trainer.global_step, path)
        self._requeue()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._after_validation:  # the count it expects from a save in on_validation_end
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
        if not self._mid_validation:
            return
        # Lightning reads a checkpoint whose validation progress counts only whole batches as one
        # saved after the validation, and skips it on resume: the epoch would end without val/acc
        # (EarlyStopping fails) and without its checkpoint. Recorded as stopped inside the first
        # validation batch, the validation runs again on resume, all of it (with the batches done
        # counted, Lightning would stop that many batches short), as the uninterrupted run did.
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
        for counts in (progress["total"], progress["current"]):
            counts.update(ready=1, started=1, processed=0, completed=0)

    def on_validation_end(self, trainer, pl_module) -> None:
        # A validation resumed from a stop inside it ran all its batches after the one counted as
        # started: its count stays one ahead for the rest of the epoch, and a later stop in this
        # epoch (validations every val_check_interval) would be read as inside this validation.
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        total = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total
        if total.ready != total.completed:
            total.ready = total.started = total.processed = total.completed
        self._validated_at = trainer.global_step

    def _requeue(self) -> None:
        if self.received not in self.REQUEUE:
            return
        previous = self._previous.get(self.received)
        if callable(previous):  # submitit: requeue the job (and exit)
            previous(self.received, None)
        elif os.environ.get("SLURM_JOB_ID") and not in_submitit() and int(os.environ.get("SLURM_PROCID", 0)) == 0:
            job = os.environ["SLURM_JOB_ID"]
            log.warning("requeueing SLURM job %s", job)
            subprocess.run(["scontrol", "requeue", job], check=False)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


class ResumeMidEpoch(pl.Callback):
    """Records the batches done in the current epoch; on resume the sampler skips them."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # in the fit, or at a stop while testing with no last.ckpt to keep (the fit's state)
        checkpoint["xtune_data"] = {
            "epoch": trainer.current_epoch,
            "batches_done": int(trainer.fit_loop.epoch_loop.batch_progress.current.completed),
            "batches_per_epoch": int(trainer.num_training_batches),
            # early stopping ends the fit after the last checkpoint was written; Lightning does
            # not keep that decision, and a resumed run would train one more epoch
            "should_stop": bool(trainer.should_stop),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get("xtune_data")
        if not state or trainer.state.fn != "fit":
            return
        if state.get("should_stop"):
            trainer.should_stop = True
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "resume_skip_samples"):
            return
        done = state["batches_done"]
        if 0 < done < state["batches_per_epoch"]:  # saved mid-epoch
            datamodule.resume_skip_samples = done * datamodule.batch_size * trainer.world_size
            log.info("resuming mid-epoch %d after %d batches", state["epoch"], done)
            # Lightning warns that a plain dataloader cannot resume mid-epoch: this one does
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
