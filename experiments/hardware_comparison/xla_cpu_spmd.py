"""SPMD on 1, 2 and 4 XLA:CPU devices: step time, compile counts and collectives (XLA:CPU is not a TPU).

Each run is xtune-xla-check (the xla_check task on the composed `xla_check` config, exactly as the
console script runs it) in a fresh process, with one extra callback that times the steady-state
training steps. The device count is fixed when torch_xla's runtime starts, hence one process per run.

    PJRT_DEVICE=CPU .venv-xla/bin/python experiments/hardware_comparison/xla_cpu_spmd.py \\
        --out experiments/hardware_comparison/xla_cpu_spmd.json

Writes every run to --out (JSON) and prints the table of medians. `--worker SPEC` is the per-run
process (internal).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: the quickstart config as xtune-xla-check runs it (trainer=xla_cpu: SPMD, bf16-true), longer epochs;
#: 4 x 12 = 48 steps stay below the profile's log_every_n_steps=50 (a step that logs compiles its own graph)
BASE = ["experiment=quickstart", "xla_check.epochs=4", "xla_check.train_batches=12", "xla_check.val_batches=3",
        "data.batch_size=64"]
#: (label, overrides): Lightning's single-device strategy (the path before SPMD); SPMD data parallel on
#: 1, 2, 4 devices; the same with XLA's own BatchNorm (XLA_BATCHNORM: xtune's spmd_batchnorm switched
#: off, to show what it changes); FSDPv2 on 4
XLA_BATCHNORM = ", XLA's own BatchNorm"
RUNS = [
    ("1 device, no SPMD (SingleDeviceXLAStrategy)", ["hardware.xla_cpu_devices=1", "trainer.strategy=auto"]),
    ("1 device", ["hardware.xla_cpu_devices=1"]),
    ("2 devices", ["hardware.xla_cpu_devices=2"]),
    ("4 devices", ["hardware.xla_cpu_devices=4"]),
    ("2 devices" + XLA_BATCHNORM, ["hardware.xla_cpu_devices=2"]),
    ("4 devices" + XLA_BATCHNORM, ["hardware.xla_cpu_devices=4"]),
    ("4 devices, FSDPv2", ["hardware.xla_cpu_devices=4", "trainer.strategy=xla_spmd_fsdp"]),
]


def worker(spec: dict) -> dict:
    """One xtune-xla-check run with a step timer attached; returns its report plus the timings."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from xtune.config import CONFIG_DIR
    from xtune.config.resolvers import register
    from xtune.hardware import xla
    from xtune.tasks.xla_check import xla_check

    class StepTimer(pl.Callback):
        """Seconds per training step over each epoch after the first (device synchronised at both ends)."""

        def __init__(self):
            self.per_epoch: list[float] = []
            self._start, self._steps = None, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch >= 1 and batch_idx == 0:
                xla.wait()
                self._start, self._steps = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self._start is None:
                return
            self._steps += 1
            if batch_idx == trainer.num_training_batches - 1:
                xla.wait()
                self.per_epoch.append((time.perf_counter() - self._start) / self._steps)
                self._start = None

    if spec["xla_batchnorm"]:  # the strategy's BatchNorm replacement switched off (comparison rows only)
        from xtune.hardware import spmd_batchnorm

        spmd_batchnorm.install = lambda: None
    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="xla_check", overrides=spec["overrides"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = spec["run_dir"]
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = spec["run_dir"]
    HydraConfig.instance().set_config(cfg)
    timer = StepTimer()
    started = time.time()
    report = xla_check(cfg, extra_callbacks=[timer])
    import torch_xla.debug.metrics as met

    compile_time = met.metric_data("CompileTime")
    return {**report, "step_s_per_epoch": timer.per_epoch, "step_s": statistics.median(timer.per_epoch),
            "compile_s": round(compile_time[1] / 1e9, 2) if compile_time else None,
            "run_s": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("xla_cpu_spmd.json"))
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all runs, interleaved")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker.read_text())
        Path(spec["out"]).write_text(json.dumps(worker(spec)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for label, overrides in RUNS:
                name = f"r{repeat}_{len(results)}"
                spec = {"overrides": [*BASE, *overrides], "run_dir": f"{tmp}/{name}", "out": f"{tmp}/{name}.json",
                        "xla_batchnorm": label.endswith(XLA_BATCHNORM)}
                Path(f"{tmp}/{name}.spec.json").write_text(json.dumps(spec))
                env = {**os.environ, "PJRT_DEVICE": "CPU", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1"}
                env.pop("CPU_NUM_DEVICES", None)  # the profile sets it from hardware.xla_cpu_devices
                done = subprocess.run([sys.executable, __file__, "--worker", f"{tmp}/{name}.spec.json"], cwd=ROOT,
                                      env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{label} failed:\n{done.stderr[-3000:]}")
                run = json.loads(Path(spec["out"]).read_text())
                results.append({"label": label, "repeat": repeat, "overrides": spec["overrides"], **run})
                print(f"{label}: {run['step_s'] * 1000:.1f} ms/step, {run['graphs_compiled']} graphs, "
                      f"collectives {run['collectives_per_step']}", flush=True)
    import platform

    import torch
    import torch_xla

    args.out.write_text(json.dumps({
        "note": "XLA:CPU is not a TPU: the devices are slices of this machine's CPU cores",
        "command": "PJRT_DEVICE=CPU python experiments/hardware_comparison/xla_cpu_spmd.py",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": {"torch": torch.__version__, "torch_xla": torch_xla.__version__},
        "base_overrides": BASE,
        "runs": results,
    }, indent=2) + "\n")
    print(table(results))


def table(results: list[dict]) -> str:
    rows = ["| run | ms per step (median of repeats) | graphs compiled | compiled in steps, epoch 0 | recompiles after "
            "warm-up | compile s | collectives per step |", "|---|---:|---:|---:|---:|---:|---|"]
    for label, _ in RUNS:
        runs = [r for r in results if r["label"] == label]
        step = statistics.median(r["step_s"] for r in runs) * 1000
        first = runs[0]
        collectives = ", ".join(f"{n} {op}" for op, n in sorted((first["collectives_per_step"] or {}).items()))
        rows.append(f"| {label} | {step:.1f} | {first['graphs_compiled']} | {first['step_compiles_per_epoch'][0]} | "
                    f"{first['recompiles_after_warmup']} | {statistics.median(r['compile_s'] for r in runs):.1f} | "
                    f"{collectives or 'none'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
