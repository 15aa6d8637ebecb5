"""AdamW's step alone on this machine: torch's per-tensor default, foreach, and the fused kernel.

    python experiments/hardware_comparison/fused_optimizer.py [out.json]

Each model gets one backward pass (batch 32) for its gradients, then two param groups (weight decay
on matrices, none on norms and biases, as timm's create_optimizer_v2 builds them) and 10 steps x 5
repeats per implementation; the median milliseconds per step are printed and written as JSON.
"""

import json
import platform
import statistics
import sys
import time

import timm
import torch

MODELS = (("test_resnet", 32), ("efficientnet_lite0", 64), ("resnet18", 64))


def step_ms(model, mode: str) -> float:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    kernel = {"foreach": mode == "foreach", "fused": True if mode == "fused" else None}
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, **kernel)
    for _ in range(3):
        optimizer.step()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10):
            optimizer.step()
        times.append((time.perf_counter() - started) / 10 * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    rows = []
    for name, size in MODELS:
        model = timm.create_model(name, num_classes=10)
        model(torch.randn(32, 3, size, size)).sum().backward()
        row = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
               "tensors": len(list(model.parameters()))}
        row.update({f"{mode}_ms": step_ms(model, mode) for mode in ("single", "foreach", "fused")})
        print(row, flush=True)
        rows.append(row)
    report = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "timm": timm.__version__, "rows": rows}
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
