"""Throughput measurement helpers: FLOPs per step, peak FLOP/s of known devices, MFU, timing.

Lightning's ThroughputMonitor logs per-step rates during a run; a benchmark needs one careful
number per setting (device synchronised at the edges of a timed window, warm-up excluded),
compared across settings and against a plain PyTorch loop, so bench.py uses these.
"""

from __future__ import annotations

import time

import torch

#: dense peak TFLOP/s per device and math type, from the vendors' data sheets (no sparsity).
#: Keys are matched as substrings of torch.cuda.get_device_name() / the TPU type, longest first.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
    "TPU v6e": {"bf16": 918.0},
    "TPU v6 lite": {"bf16": 918.0},
    "TPU v5p": {"bf16": 459.0},
    "TPU v5e": {"bf16": 197.0},
    "TPU v5 lite": {"bf16": 197.0},
    "TPU v4": {"bf16": 275.0},
}


def math_type(precision: str, device_kind: str) -> str:
    """Which peak applies: bf16 / fp16 tensor math, TF32, or plain fp32."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if device_kind == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "fp32"


def peak_flops(device_name: str, precision: str, device_kind: str) -> float | None:
    """Peak FLOP/s for this device and precision, or None when the device is not in the table."""
    kind = math_type(precision, device_kind)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            tflops = PEAK_TFLOPS[key].get(kind)
            return tflops * 1e12 if tflops else None
    return None


def train_step_flops(model: torch.nn.Module, batch_size: int, input_size, num_classes: int) -> int:
    """FLOPs of one forward + backward pass at `batch_size`, counted by torch.utils.flop_counter
    (matmuls and convolutions; the optimizer's element-wise update is not counted)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).float().cpu()
    probe.train()
    counted_batch = 2  # FLOPs scale linearly with the batch (and BatchNorm needs 2 in training mode)
    images = torch.randn(counted_batch, *input_size)
    targets = torch.randint(0, num_classes, (counted_batch,))
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(probe(images), targets)
        loss.backward()
    return int(counter.get_total_flops() * batch_size / counted_batch)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xla":
        from xtune.hardware import xla

        xla.sync()
        xla.wait()


def peak_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class Stopwatch:
    """Time a window of steps with the device synchronised at both edges."""

    def __init__(self, device: torch.device):
        self.device = device
        self.started = None

    def start(self) -> None:
        synchronize(self.device)
        self.started = time.perf_counter()

    def stop(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.started


def memory_report(trainer, pl_module) -> dict:
    """Peak memory of the fit: device (CUDA), process RSS (Linux), and the training state."""

    def mb(value):
        return round(value / 2**20, 1) if value else None

    params = sum(p.numel() * p.element_size() for p in pl_module.parameters())
    grads = sum(p.numel() * p.element_size() for p in pl_module.parameters() if p.requires_grad)
    optimizer_state = sum(
        t.numel() * t.element_size()
        for optimizer in trainer.optimizers for state in optimizer.state.values()
        for t in state.values() if torch.is_tensor(t)
    )
    device = trainer.strategy.root_device
    peak_rss = None
    try:
        with open("/proc/self/status") as handle:
            peak_rss = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM"))
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "peak_device_mb": mb(peak_memory_bytes(device)),
        "peak_process_rss_mb": mb(peak_rss),
        "training_state_mb": mb(params + grads + optimizer_state),  # weights + gradients + optimizer state
    }
