"""Describe the hardware a Trainer runs on, for the run summary."""

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


def describe(trainer) -> dict:
    import torch

    accelerator = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
    info = {
        "accelerator": accelerator,
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if accelerator == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(trainer.strategy.root_device)
    else:
        info["device_name"] = info["cpu"] if accelerator == "cpu" else accelerator
    return info
