"""Hardware: profiles live in configs/trainer/; everything device-specific lives here.

profile.py applies a profile (device checks, precision, backend switches, channels_last, the
fused optimizer kernel, device callbacks), strategies.py builds strategies that need Python
objects (FSDP), xla.py holds all torch_xla code, info.py describes the hardware for run summaries.
"""

from xtune.hardware.profile import (
    apply_memory_format,
    callbacks,
    is_rank_zero,
    optimizer_kwargs,
    prepare,
    prepare_ddp_relaunch,
    wants_channels_last,
)

__all__ = ["apply_memory_format", "callbacks", "is_rank_zero", "optimizer_kwargs", "prepare",
           "prepare_ddp_relaunch", "wants_channels_last"]
