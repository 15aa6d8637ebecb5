"""bench.py: training throughput of xtune against a hand-written PyTorch loop, over a grid.

For every (model, precision, batch size, channels_last, compile) point it times the same
training steps twice, interleaved over repeats: through xtune (ClassificationModule + the
profile's Lightning Trainer, metrics and schedule included) and through a plain PyTorch loop
(same model and initial weights, same batch in device memory, same precision and optimizer).
Reported per point: images/s, step time, xtune/plain step-time ratio, peak memory, FLOPs per
step and MFU; plus the time from `python train.py` to the first training step.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from xtune.report import versions, write_json

log = logging.getLogger("xtune")


def bench(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.paths.output_dir)
    spec = cfg.bench
    if spec.mode not in ("steps", "job"):  # a typo answers before torch is imported
        from xtune.errors import XtuneConfigError

        raise XtuneConfigError(f"bench.mode={spec.mode}: expected steps (the step-time grid) or job (one whole "
                               "job on an image folder, xtune against timm's pipeline)")
    if spec.mode == "job":
        from xtune.tasks.bench_job import bench_job, job_markdown

        report = bench_job(cfg, run_dir)
        write_json(run_dir / "bench_job.json", report)
        (run_dir / "bench_job.md").write_text(job_markdown(report))
        print(job_markdown(report))
        return report
    import torch

    from xtune import hardware

    models = list(spec.models or [cfg.model.name])
    grid = list(itertools.product(models, spec.precisions, spec.batch_sizes, spec.channels_last, spec.compile))
    rows = []
    for name, precision, batch_size, channels_last, compile_ in grid:
        point = OmegaConf.create(cfg)  # a private copy for this point
        with open_dict(point):
            point.model.name = name
            point.model.compile = bool(compile_)
            point.model.pretrained = False  # speed does not depend on the weights' values
            point.model.weights = None
            if precision is not None:
                point.trainer.precision = precision
            if channels_last is not None:
                point.hardware.channels_last = channels_last
        kind = hardware.prepare(point)
        log.info("bench %s %s batch %s channels_last=%s compile=%s", name, point.trainer.precision,
                 batch_size, channels_last, compile_)
        rows.append(_measure(point, kind, int(batch_size)))
        if kind == "cuda":
            torch.cuda.empty_cache()
    report = {
        "task": "bench",
        "run_dir": str(run_dir),
        "rows": rows,
        "startup": _startup(cfg, run_dir) if spec.startup else None,
        "settings": OmegaConf.to_container(spec, resolve=True),
        "versions": versions(),
    }
    write_json(run_dir / "bench.json", report)
    (run_dir / "bench.md").write_text(markdown(report))
    plot(rows, run_dir / "bench.png")
    print(markdown(report))
    return report


def _device(kind: str):
    import torch

    if kind == "cuda":
        return torch.device("cuda", 0)
    if kind == "tpu":
        from xtune.hardware import xla

        return xla.device()
    return torch.device(kind)


def _measure(cfg: DictConfig, kind: str, batch_size: int) -> dict:
    import torch

    from xtune import hardware
    from xtune.hardware.info import device_name
    from xtune.hardware.throughput import peak_flops, train_step_flops
    from xtune.config.instantiate import build

    spec = cfg.bench
    torch.manual_seed(cfg.seed)
    backbone = build(cfg.model, "model")(num_classes=int(spec.num_classes))
    size = cfg.data.image_size or backbone.pretrained_cfg["input_size"][-1]
    input_size = (3, int(size), int(size))
    channels_last = hardware.wants_channels_last(cfg, kind, backbone)
    device = _device(kind)
    images = torch.randn(batch_size, *input_size, device=device)
    targets = torch.randint(0, int(spec.num_classes), (batch_size,), device=device)

    xtune_times, plain_times, xtune_memory, plain_memory = [], [], [], []
    for _ in range(int(spec.repeats)):  # interleaved: drifts in machine speed hit both alike
        seconds, memory = _xtune_steps(cfg, kind, backbone, images, targets, channels_last)
        xtune_times.append(seconds)
        xtune_memory.append(memory)
        if spec.baseline:
            seconds, memory = _plain_steps(cfg, kind, backbone, images, targets, channels_last, device)
            plain_times.append(seconds)
            plain_memory.append(memory)

    xtune_step = statistics.median(xtune_times)
    plain_step = statistics.median(plain_times) if plain_times else None
    flops = train_step_flops(backbone, batch_size, input_size, int(spec.num_classes))
    name = device_name(kind, device)
    peak = peak_flops(name, str(cfg.trainer.precision), kind)
    return {
        "model": cfg.model.name,
        "precision": str(cfg.trainer.precision),
        "batch_size": batch_size,
        "image_size": int(size),
        "channels_last": channels_last,
        "compile": bool(cfg.model.compile),
        "device": name,
        "xtune_step_s": round(xtune_step, 6),
        "plain_step_s": round(plain_step, 6) if plain_step else None,
        "xtune_images_per_s": round(batch_size / xtune_step, 1),
        "plain_images_per_s": round(batch_size / plain_step, 1) if plain_step else None,
        "xtune_over_plain": round(xtune_step / plain_step, 4) if plain_step else None,
        "xtune_step_s_repeats": [round(t, 6) for t in xtune_times],
        "plain_step_s_repeats": [round(t, 6) for t in plain_times],
        "peak_memory_mb": _mb(xtune_memory),
        "plain_peak_memory_mb": _mb(plain_memory),
        "flops_per_step": flops,
        "achieved_tflops": round(flops / xtune_step / 1e12, 3),
        "peak_tflops": round(peak / 1e12, 1) if peak else "unknown",
        "mfu": round(flops / xtune_step / peak, 4) if peak else "unknown",
    }


def _mb(values: list):
    """Largest peak over the repeats in MiB; None where the device does not report it (CPU)."""
    values = [v for v in values if v]
    return round(max(values) / 2**20, 1) if values else None


class _RepeatedBatch:
    """A dataset of `length` references to one in-memory batch (the plain loop's data, too)."""

    def __init__(self, batch, length):
        self.batch, self.length = batch, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.batch


def _xtune_steps(cfg, kind, backbone, images, targets, channels_last):
    """Seconds per step (median window) through xtune's module and the profile's Trainer."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from xtune import hardware
    from xtune.callbacks import FiniteLoss
    from xtune.hardware.throughput import Stopwatch, peak_memory_bytes, reset_peak_memory
    from xtune.models.module import ClassificationModule
    from xtune.config.instantiate import build

    spec = cfg.bench
    warmup, steps = int(spec.warmup_steps), int(spec.steps)
    scheduler = build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    optimizer = build(cfg.optim, "optim")
    module = ClassificationModule(copy.deepcopy(backbone), int(spec.num_classes), optimizer, scheduler,
                                  optimizer_kwargs=hardware.optimizer_kwargs(cfg, kind, optimizer))
    if channels_last:
        module.use_channels_last()

    class Timer(pl.Callback):
        seconds = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                reset_peak_memory(images.device)
                self.watch = Stopwatch(images.device)
                self.watch.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == warmup + steps - 1:
                self.seconds = self.watch.stop() / steps
                self.memory = peak_memory_bytes(images.device)

    timer = Timer()
    trainer_cfg = OmegaConf.create(cfg)
    with open_dict(trainer_cfg):
        trainer_cfg.trainer.update(
            max_epochs=1, max_steps=-1, limit_val_batches=0, num_sanity_val_steps=0,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            default_root_dir=str(Path(cfg.paths.output_dir) / "lightning"),
        )
    callbacks = [*hardware.callbacks(trainer_cfg, kind), timer, FiniteLoss(check_every_n_steps=50)]
    trainer = build(trainer_cfg.trainer, "trainer", callbacks=callbacks, logger=False)
    loader = DataLoader(_RepeatedBatch((images, targets), warmup + steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds, timer.memory


def _plain_steps(cfg, kind, backbone, images, targets, channels_last, device):
    """Seconds per step of the hand-written loop: forward, loss, backward, step, zero_grad (with
    xtune's optimizer kernel, so that the ratio is the framework's own cost)."""
    import torch

    from xtune import hardware
    from xtune.hardware.throughput import Stopwatch, peak_memory_bytes, reset_peak_memory
    from xtune.config.instantiate import build

    spec = cfg.bench
    precision = str(cfg.trainer.precision)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    model = copy.deepcopy(backbone).to(device)
    x = images
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if precision in ("bf16-true", "16-true"):
        model = model.to(dtype)
        x = x.to(dtype)
    factory = build(cfg.optim, "optim")
    optimizer = factory(model, **hardware.optimizer_kwargs(cfg, kind, factory))
    autocast = (torch.autocast(device.type, dtype=dtype) if precision.endswith("-mixed") else nullcontext())
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    warmup, steps = int(spec.warmup_steps), int(spec.steps)
    watch = Stopwatch(device)
    for step in range(warmup + steps):
        if step == warmup:
            reset_peak_memory(device)
            watch.start()
        with autocast:
            loss = criterion(model(x), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "xla":
            from xtune.hardware.xla import sync

            sync()
    return watch.stop() / steps, peak_memory_bytes(device)


def _startup(cfg: DictConfig, run_dir: Path) -> dict:
    """Seconds from launching `python train.py` to its first training step (one real run)."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    out = run_dir / "startup_run"
    script = Path(__file__).resolve().parents[3] / "train.py"
    command = [
        sys.executable, str(script) if script.exists() else "-c",
        *([] if script.exists() else ["from xtune.cli import train; train()"]),
        f"trainer={choices.get('trainer', 'default')}", "data=synthetic", f"model.name={cfg.model.name}",
        "model.pretrained=false", "logger=none", "callbacks=none", "trainer.max_steps=3", "test=false",
        f"data.batch_size={min(cfg.bench.batch_sizes)}", f"data.source.num_samples={4 * min(cfg.bench.batch_sizes)}",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", f"hydra.run.dir={out}",
    ]
    if cfg.data.image_size:
        command.append(f"data.image_size={cfg.data.image_size}")
    launched = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    summary = json.loads((out / "summary.json").read_text())
    first = summary["timing"]["first_step_at"]
    return {
        "command": " ".join(command[1:]),
        "seconds_to_first_step": round(first - launched, 2),
        "seconds_in_task_before_first_step": summary["timing"]["setup_s"],
    }


def markdown(report: dict) -> str:
    columns = [
        ("model", "model"), ("precision", "precision"), ("batch", "batch_size"), ("NHWC", "channels_last"),
        ("compile", "compile"), ("xtune img/s", "xtune_images_per_s"), ("plain img/s", "plain_images_per_s"),
        ("xtune/plain step time", "xtune_over_plain"), ("step ms", "xtune_step_s"),
        ("peak MB", "peak_memory_mb"), ("TFLOP/s", "achieved_tflops"), ("MFU", "mfu"),
    ]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in report["rows"]:
        cells = []
        for _, key in columns:
            value = row.get(key)
            if key == "xtune_step_s":
                value = round(value * 1000, 2)
            cells.append("n/a" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    device = report["rows"][0]["device"] if report["rows"] else "?"
    lines.append("")
    lines.append(f"Device: {device}. Median of {report['settings']['repeats']} interleaved repeats of "
                 f"{report['settings']['steps']} steps after {report['settings']['warmup_steps']} warm-up steps.")
    startup = report.get("startup")
    if startup and "seconds_to_first_step" in startup:
        lines.append(f"From `python train.py` to the first training step: {startup['seconds_to_first_step']} s "
                     f"({startup['seconds_in_task_before_first_step']} s of it after Hydra composed the config).")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['precision']} b{r['batch_size']}"
              + (" NHWC" if r["channels_last"] else "") + (" compiled" if r["compile"] else "") for r in rows]
    xs = range(len(rows))
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.4
    axis.bar([x - width / 2 for x in xs], [r["xtune_images_per_s"] for r in rows], width, label="xtune")
    axis.bar([x + width / 2 for x in xs], [r["plain_images_per_s"] or 0 for r in rows], width, label="plain PyTorch")
    axis.set_xticks(list(xs))
    axis.set_xticklabels(labels, fontsize=8)
    axis.set_ylabel("training images / s")
    axis.set_title(f"Training throughput on {rows[0]['device']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
