"""How checkpoints reach the disk: atomically, on every device whose strategy writes plain files.

Decided from the Trainer's objects, not from config strings: a strategy that brings its own
checkpoint IO (XLA's XLACheckpointIO, which Lightning's XLA strategies assert they have; FSDP's
sharded writers) keeps it; only Lightning's plain TorchCheckpointIO is replaced.
"""

from __future__ import annotations

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from xtune.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, then os.replace (atomic on POSIX).

    Lightning's TorchCheckpointIO stages the checkpoint in the system temp dir and moves it into
    place, which is a copy (not atomic) when /tmp and the run directory are different file
    systems, as on most clusters; a kill during that copy leaves a truncated last.ckpt.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            try:
                with open(tmp, "wb", buffering=0) as handle:  # unbuffered: a full disk fails in write()
                    torch.save(checkpoint, handle)
            except RuntimeError as error:
                # torch reports a full disk as "[enforce fail ...] unexpected pos"; the OSError is
                # its context: raise that, naming the checkpoint, so the user reads what happened
                if isinstance(error.__context__, OSError):
                    raise OSError(error.__context__.errno, error.__context__.strerror, str(path)) from None
                raise


def use_atomic_checkpoints(trainer) -> None:
    """Give the Trainer's strategy AtomicCheckpointIO where it would use plain TorchCheckpointIO."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:  # exactly: subclasses are another writer
        strategy.checkpoint_io = AtomicCheckpointIO()
