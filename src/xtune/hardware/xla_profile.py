"""XLA profiles (trainer=tpu, trainer=xla_cpu): which strategy runs, on how many devices.

Torch-free at import, like profile.py: hardware.prepare calls `configure` for XLA profiles before
any XLA device exists. SPMD (xla_spmd, the default of trainer=tpu) runs one process per host over
every chip of the host; xla_spawn is Lightning's one process per chip; on XLA:CPU the number of
devices is `hardware.xla_cpu_devices`, several only under SPMD.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: strategy names that run SPMD (one process per host) and the XLASPMDStrategy arguments each stands
#: for; spmd.register_names() makes them known to Lightning
SPMD_NAMES = {"xla_spmd": {}, "xla_spmd_fsdp": {"fsdp": True}}


def is_spmd(strategy) -> bool:
    """Does a `trainer.strategy` config value (a registered name or a `_target_` node) run SPMD?"""
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", "")).rsplit(".", 1)[-1] == "XLASPMDStrategy"
    return str(strategy).lower() in SPMD_NAMES


def configure(cfg) -> None:
    """Complete cfg.trainer for the XLA strategy it names; called by hardware.prepare for XLA profiles.

    Runs before any XLA device exists, because SPMD and the number of XLA:CPU devices are fixed when
    torch_xla's runtime starts. Under SPMD Lightning sees one process and one (virtual) device, so
    `trainer.devices` becomes 1; the mesh takes every chip of the host (TPU) or
    `hardware.xla_cpu_devices` devices (trainer=xla_cpu). Bad combinations get one clear line.
    """
    from omegaconf import open_dict

    from xtune.errors import XtuneConfigError
    from xtune.hardware.spmd import register_names

    register_names()
    trainer = cfg.trainer
    strategy, devices = trainer.get("strategy", "auto"), trainer.get("devices", "auto")
    spmd = is_spmd(strategy)
    name = strategy.get("_target_") if isinstance(strategy, Mapping) else strategy
    if isinstance(trainer.get("accelerator"), Mapping):  # trainer=xla_cpu: XLA on this CPU
        count = (cfg.get("hardware") or {}).get("xla_cpu_devices", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise XtuneConfigError(f"hardware.xla_cpu_devices={count}: expected a whole number >= 1 (how many "
                                   "XLA:CPU devices SPMD splits each batch over)")
        if count > 1 and not spmd:
            raise XtuneConfigError(
                f"hardware.xla_cpu_devices={count} with trainer.strategy={name}: several XLA:CPU devices run only "
                "under SPMD (trainer.strategy=xla_spmd or xla_spmd_fsdp); one process per device aborts on the "
                "first collective on XLA:CPU (pytorch/xla #5005, #9089)")
        if str(devices) not in ("1", "auto", "-1"):
            raise XtuneConfigError(
                f"trainer=xla_cpu trainer.devices={devices}: the number of XLA:CPU devices is "
                f"hardware.xla_cpu_devices (e.g. hardware.xla_cpu_devices={devices}); trainer.devices stays 1")
        set_cpu_device_count(count)
    elif spmd and str(devices) not in ("auto", "-1"):
        raise XtuneConfigError(
            f"trainer.strategy={name} drives every chip of the host from one process (SPMD): trainer.devices must "
            f"be auto, not {devices}; for {devices} chip(s) use trainer.strategy=xla_spawn trainer.devices={devices} "
            "(one process per chip) or, for one chip, trainer.strategy=auto trainer.devices=1")
    if spmd:
        with open_dict(cfg):
            trainer.devices = 1  # Lightning's view: one process, one virtual device standing for the mesh


def set_cpu_device_count(count: int) -> None:
    """How many devices torch_xla's CPU client creates (CPU_NUM_DEVICES), before its runtime starts.

    The count is read once, when the runtime starts: asking another count later in the same process
    is refused (a multirun over device counts needs one process per count). A TPU ignores it.
    """
    import torch_xla

    from xtune.errors import XtuneConfigError

    if torch_xla._XLAC._xla_runtime_is_initialized():
        import torch_xla.runtime as xr

        running = xr.global_runtime_device_count()
        if xr.device_type() == "CPU" and running != count:
            raise XtuneConfigError(
                f"{count} XLA:CPU device(s) asked, but torch_xla already runs with {running} XLA:CPU device(s) in "
                "this process, and the count is fixed when its runtime starts: run in a fresh process")
        return
    os.environ["CPU_NUM_DEVICES"] = str(int(count))
