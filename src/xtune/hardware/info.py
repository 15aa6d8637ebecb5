"""Describe the hardware a run uses, for summaries and benchmarks."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(kind: str, device=None) -> str:
    import torch

    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if kind == "tpu":
        from xtune.hardware import xla

        return xla.device_name(cpu_name())
    if kind == "mps":
        return "Apple MPS"
    return cpu_name()


def describe(trainer) -> dict:
    accelerator = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
    kind = {"xla": "tpu", "xlacpu": "tpu"}.get(accelerator, accelerator)
    root = trainer.strategy.root_device
    return {
        "accelerator": accelerator,
        "device_type": root.type,
        "device_name": device_name(kind, root),
        # SPMD: Lightning sees one process and one virtual device; the mesh spans the real ones
        "devices": getattr(trainer.strategy, "num_devices", None) or trainer.num_devices,
        "nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }
