"""What a run leaves behind: summary.json, the training-curves PNG, library versions."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from xtune.atomic import atomic_path, write_text

SECRET_WORDS = ("key", "token", "secret", "password", "credential")


def versions() -> dict:
    names = ["xtune", "torch", "torchvision", "timm", "pytorch-lightning", "torchmetrics",
             "hydra-core", "omegaconf", "wandb"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        import torch

        found["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return found


def redact(value):
    """A copy of a config container with values under secret-looking keys replaced."""
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if any(w in str(k).lower() for w in SECRET_WORDS) and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def plot_curves(history: list[dict], path: Path) -> Path | None:
    """Loss and accuracy per epoch, train and val, side by side."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "acc")):
        for stage, style in (("train", "-o"), ("val", "-s")):
            points = [(row["epoch"], row[f"{stage}/{metric}"]) for row in history if f"{stage}/{metric}" in row]
            if points:
                axis.plot(*zip(*points), style, label=stage, markersize=3)
        axis.set_xlabel("epoch")
        axis.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0].set_title("loss")
    axes[1].set_title("top-1 accuracy")
    # fixed margins: tight_layout would draw the figure once more to measure its labels (~0.15 s)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


def _number(value):
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return value


def run_summary(cfg, trainer, module, datamodule, stats, metrics: dict, started: float, timeline=None) -> dict:
    """Everything a reader needs to judge a run, in one JSON-ready dict."""
    import time

    from xtune.hardware.info import describe
    from xtune.models.finetune import trainable_summary

    checkpoint = trainer.checkpoint_callback  # the first ModelCheckpoint: best on val/acc
    last = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", "") is None), None)
    ips = stats.images_per_second if stats is not None else None
    return {
        "status": "completed",
        "task": cfg.get("task_name"),
        "run_dir": str(cfg.paths.output_dir),
        "metrics": {key: _number(value) for key, value in sorted(metrics.items())},
        "optimized_metric": cfg.get("optimized_metric"),
        "best": {
            "monitor": getattr(checkpoint, "monitor", None),
            "score": _number(getattr(stats, "best_score", None)),
            "epoch": getattr(stats, "best_epoch", None),
            "checkpoint": getattr(checkpoint, "best_model_path", None) or None,
            "last_checkpoint": getattr(last, "best_model_path", None) or None,
        },
        "epochs_completed": trainer.current_epoch,
        "global_step": trainer.global_step,
        "throughput": {"train_images_per_second": _number(ips)},
        "memory": getattr(stats, "memory", None) or None,
        "timing": {
            "first_step_at": getattr(stats, "first_step_at", None),
            "setup_s": _number(stats.first_step_at - started) if getattr(stats, "first_step_at", None) else None,
            # seconds to reach each phase from the previous one: launch -> task (interpreter,
            # imports, Hydra) -> checks -> data -> model -> trainer -> first_step -> last_step -> tested
            "phases_s": timeline.seconds() if timeline else None,
        },
        "parameters": {k: v for k, v in trainable_summary(module.backbone).items() if k != "trainable_fraction"},
        "model": {"name": cfg.model.name, "weights": getattr(module.backbone, "weight_source", None)},
        "data": {
            "classes": datamodule.classes,
            "sizes": {name: len(split) for name, split in datamodule.splits.items()},
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in (datamodule.data_config or {}).items()},
            "batch_size": datamodule.batch_size,
        },
        "hardware": describe(trainer),
        "precision": str(trainer.precision),
        "seed": cfg.get("seed"),
        "versions": versions(),
        "wall_time_s": round(time.time() - started, 2),
    }


def write_summary(run_dir: Path, summary: dict, history: list | None = None) -> None:
    """summary.json (with the per-epoch history) and curves.png in the run directory."""
    run_dir = Path(run_dir)
    if history:
        summary = {**summary, "history": history}
        plot_curves(history, run_dir / "curves.png")
    write_json(run_dir / "summary.json", summary)


def process_started_at() -> float | None:
    """Wall-clock time this process was started (Linux), to time what happens before any xtune
    code runs: the interpreter, imports, Hydra composing the config."""
    import os

    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return None


class Timeline:
    """Wall-clock marks through a run: summary.json's `timing` says where the seconds went
    (start-up phases, training, what follows the last step)."""

    def __init__(self):
        import time

        self.marks = [("launch", process_started_at()), ("task", time.time())]

    def mark(self, name: str, at: float | None = None) -> None:
        import time

        self.marks.append((name, at or time.time()))

    def seconds(self) -> dict:
        """Seconds spent reaching each mark from the one before it, in order."""
        known = [(name, at) for name, at in self.marks if at]
        return {name: round(at - before, 3) for (_, before), (name, at) in zip(known, known[1:])}


class RunRecord:
    """summary.json and curves.png for however a run ends, as one context manager.

    Set `record.summary` when the run completed; an exception leaves a "failed" summary (and is
    re-raised), an interruption (SIGTERM, preemption, Ctrl-C: GracefulStop saved a checkpoint)
    an "interrupted" one and the XtuneInterrupted that tells the user how to continue. Written by
    global rank zero only.
    """

    def __init__(self, run_dir: Path, trainer, stats, stop, started: float):
        self.run_dir, self.trainer, self.stats, self.stop, self.started = Path(run_dir), trainer, stats, stop, started
        self.summary: dict = {"status": "running"}

    def __enter__(self) -> "RunRecord":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        import time

        from xtune.errors import XtuneInterrupted

        wall = round(time.time() - self.started, 2)
        interrupted = None
        if error is not None and self.stop.saved is not None:  # stopped at a batch boundary, saved
            trainer = self.trainer
            self.summary = {"status": "interrupted", "epoch": trainer.current_epoch,
                            "global_step": trainer.global_step, "wall_time_s": wall}
            how = "kept the fit's" if self.stop.kept else "saved"  # kept: a stop while testing
            interrupted = XtuneInterrupted(
                f"interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: {how} {self.stop.saved}; "
                "run the same command again to continue (resume=auto)")
        elif error is not None:
            self.summary = {"status": "failed", "error": f"{kind.__name__}: {error}"[:2000], "wall_time_s": wall}
        if self.trainer.is_global_zero:
            write_summary(self.run_dir, self.summary, self.stats.history)
        if interrupted is not None:
            raise interrupted from None


def final_line(summary: dict, wandb_where: str | None) -> str:
    """The last thing on the screen: where the run went, how it did, how long it took."""
    metrics = summary.get("metrics", {})
    score = " ".join(f"{k} {metrics[k]:.4f}" for k in ("test/acc", "val/acc_best") if k in metrics)
    line = f"run: {summary.get('run_dir')}  {score}  wall {summary.get('wall_time_s', 0):.0f} s"
    if wandb_where and wandb_where.startswith("wandb sync"):
        line += f"  (W&B offline; upload: {wandb_where})"
    elif wandb_where:
        line += f"  W&B: {wandb_where}"
    return line
