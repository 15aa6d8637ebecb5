"""What a run leaves behind: summary.json, the training-curves PNG, library versions."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        json.dump(data, out, indent=2, default=str)
        out.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


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
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _number(value):
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return value


def run_summary(cfg, trainer, module, datamodule, stats, metrics: dict, started: float) -> dict:
    """Everything a reader needs to judge a run, in one JSON-ready dict."""
    import time

    from xtune.hardware.info import describe

    checkpoint = trainer.checkpoint_callback
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
            "last_checkpoint": getattr(checkpoint, "last_model_path", None) or None,
        },
        "epochs_completed": trainer.current_epoch,
        "global_step": trainer.global_step,
        "throughput": {"train_images_per_second": _number(ips)},
        "memory": getattr(stats, "memory", None) or None,
        "timing": {
            "first_step_at": getattr(stats, "first_step_at", None),
            "setup_s": _number(stats.first_step_at - started) if getattr(stats, "first_step_at", None) else None,
        },
        "parameters": module.parameter_counts(),
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
