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


def tpu_name() -> str:
    """'TPU v5 lite' etc. from the TPU VM's accelerator type, or XLA:CPU for readiness checks."""
    import torch_xla.runtime as xr

    if xr.device_type() != "TPU":
        return f"XLA:{xr.device_type()} ({cpu_name()})"
    accelerator = os.environ.get("TPU_ACCELERATOR_TYPE", "")  # e.g. v5litepod-8, v4-32, v6e-8
    generation = accelerator.split("-")[0].replace("litepod", " lite").replace("pod", "")
    return f"TPU {generation}".strip() if generation else "TPU"


def device_name(kind: str, device=None) -> str:
    import torch

    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if kind == "tpu":
        return tpu_name()
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
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }
