"""The training recipe: build in dependency order, fit, test the best checkpoint, report.

Reads top to bottom. Called by `python train.py` / `xtune-train` (xtune.cli) with the composed
config; returns the value of `optimized_metric` for sweepers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from xtune.config.printing import print_config_tree
from xtune.config.validate import validate_train
from xtune.errors import XtuneConfigError
from xtune.hardware.profile import is_rank_zero

log = logging.getLogger("xtune")


def train(cfg: DictConfig) -> float | None:
    summary = run_training(cfg)
    metric = cfg.get("optimized_metric")
    value = summary["metrics"].get(metric) if metric else None
    if metric and value is None:
        log.warning("optimized_metric %s was not logged; logged: %s", metric, ", ".join(sorted(summary["metrics"])))
    return value


def run_training(cfg: DictConfig, extra_callbacks=()) -> dict:
    """Fit and test as `cfg` says; write the run directory; return the summary."""
    started = time.time()
    # Cheap checks first: a typo costs a second, not a model build.
    validate_train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    _refuse_overwrite(run_dir, cfg)
    if is_rank_zero():
        print_config_tree(cfg)

    import pytorch_lightning as pl

    from xtune import hardware
    from xtune.callbacks import FiniteLoss, RunStats, StoreRunInfo
    from xtune.checkpoint import check_resume_fits, read_checkpoint
    from xtune.models.module import ClassificationModule
    from xtune.report import run_summary, write_summary
    from xtune.tasks.common import build, build_all, build_trainer, resolved, save_config

    # The hardware first: a missing GPU or TPU, or a precision it cannot run, fails in seconds.
    kind = hardware.prepare(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    # Data next: its classes decide the size of the model's head.
    datamodule = build(cfg.data, "data")
    # The backbone with its weights (Hub cache, Hub, local file or random), sized for these classes.
    backbone = build(cfg.model, "model")(num_classes=datamodule.num_classes)
    # Preprocessing follows the backbone's own pretrained data config (timm), not ImageNet constants.
    data_config = datamodule.resolve_transforms(backbone)
    # A resumed run must continue the same model on the same classes.
    if cfg.get("ckpt_path"):
        check_resume_fits(read_checkpoint(cfg.ckpt_path), cfg.ckpt_path, cfg.model.name, datamodule.classes)

    optimizer = build(cfg.optim, "optim")
    scheduler = build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    _probe_optimizer(optimizer, backbone)
    module = ClassificationModule(backbone, datamodule.num_classes, optimizer, scheduler)
    if hardware.wants_channels_last((cfg.get("hardware") or {}).get("channels_last"), kind, backbone):
        module.use_channels_last()

    stats = RunStats(monitor="val/acc", mode="max")
    callbacks = [
        *build_all(cfg.get("callbacks"), "callbacks"),
        *hardware.callbacks(cfg, kind),
        stats,
        FiniteLoss(check_every_n_steps=int(cfg.trainer.get("log_every_n_steps") or 50)),
        StoreRunInfo(resolved(cfg), datamodule.classes, data_config, backbone.weight_source),
        *extra_callbacks,
    ]
    loggers = build_all(cfg.get("logger"), "logger")
    trainer = build_trainer(cfg, callbacks, loggers)
    hardware.prepare_ddp_relaunch()  # ranks > 0 of a DDP run re-run this exact job

    if trainer.is_global_zero:
        config = save_config(cfg, run_dir)
        for logger in loggers:
            logger.log_hyperparams(config)

    summary = {"status": "running"}
    try:
        fit_metrics = {}
        if cfg.get("train"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        test_metrics = {}
        if cfg.get("test"):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            ckpt = best or (None if cfg.get("train") else cfg.ckpt_path)
            if not ckpt:
                log.warning("no checkpoint callback: testing the final weights")
            results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
            test_metrics = dict(results[0]) if results else {}
        summary = run_summary(cfg, trainer, module, datamodule, stats, {**fit_metrics, **test_metrics}, started)
    except BaseException as error:
        summary = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
                   "wall_time_s": round(time.time() - started, 2)}
        raise
    finally:
        if trainer.is_global_zero:
            write_summary(run_dir, summary, stats.history)
    return summary


def _refuse_overwrite(run_dir: Path, cfg: DictConfig) -> None:
    """A run directory that already holds a finished run is never written over."""
    if (run_dir / "summary.json").exists() and not cfg.get("ckpt_path"):
        raise XtuneConfigError(
            f"run directory {run_dir} already holds a run (summary.json); choose another "
            "hydra.run.dir or resume it with ckpt_path=.../checkpoints/last.ckpt"
        )


def _probe_optimizer(factory, backbone) -> None:
    """Build the optimizer once now, so a wrong optim.* key fails before training starts."""
    try:
        factory(backbone)
    except (TypeError, ValueError, AssertionError) as error:
        raise XtuneConfigError(f"optim: {' '.join(str(error).split())}") from None
