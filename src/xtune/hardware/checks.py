"""Refuse hardware requests this machine cannot serve, with one line saying what to do."""

from __future__ import annotations

from xtune.errors import XtuneConfigError


def check_accelerator(accelerator: str | None) -> None:
    """`trainer.accelerator` asks for a device that is not here."""
    import torch

    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise XtuneConfigError(
            f"trainer.accelerator={name} but no CUDA GPU is visible (torch {torch.__version__}, "
            f"{build}); use trainer=cpu here, or run on a machine with a GPU"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise XtuneConfigError("trainer.accelerator=mps but Apple MPS is not available; use trainer=cpu")
