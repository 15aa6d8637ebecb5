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
from xtune.errors import XtuneConfigError, XtuneInterrupted
from xtune.hardware.profile import is_rank_zero
from xtune.launch.resume import resume_point, truncate_metrics

log = logging.getLogger("xtune")


def train(cfg: DictConfig) -> float | None:
    from xtune.hardware.profile import DistributedScope

    with DistributedScope():  # the next job of a multirun starts from a clean slate
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
    # A requeued job, or a re-run of a named run, continues where it stopped (resume=auto).
    ckpt_path, finished = resume_point(cfg, run_dir)
    if finished is not None:
        log.info("run directory %s already holds a completed run: returning its result "
                 "(resume=never or another run_name trains anew)", run_dir)
        return finished
    if is_rank_zero():
        print_config_tree(cfg)

    import pytorch_lightning as pl

    from xtune import hardware
    from xtune.callbacks import FiniteLoss, ReseedEveryStep, RunStats, StoreRunInfo
    from xtune.checkpoint import check_resume_fits, read_checkpoint
    from xtune.launch.preemption import GracefulStop, ResumeMidEpoch
    from xtune.models.finetune import Strategy, trainable_summary
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
    weight_source = backbone.weight_source
    # A resumed run must continue the same model on the same classes; its metrics.csv drops the
    # rows a killed attempt logged after the checkpoint.
    if ckpt_path:
        checkpoint = read_checkpoint(ckpt_path)
        check_resume_fits(checkpoint, ckpt_path, cfg.model.name, datamodule.classes)
        truncate_metrics(run_dir / "metrics.csv", int(checkpoint.get("global_step", 0)))
        del checkpoint

    # The fine-tuning strategy decides what trains (freezing, LoRA adapters) and at which LR.
    strategy = build(cfg.finetune, "finetune") if cfg.get("finetune") else Strategy()
    backbone = strategy.prepare(backbone)
    optimizer = build(cfg.optim, "optim")
    optimizer_kwargs = strategy.optimizer_kwargs(backbone, float(cfg.optim.get("weight_decay") or 0.0))
    scheduler = build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    _probe_optimizer(optimizer, backbone, optimizer_kwargs)
    mixup = build(cfg.mixup, "mixup") if cfg.get("mixup") else None
    module = ClassificationModule(backbone, datamodule.num_classes, optimizer, scheduler,
                                  label_smoothing=float(cfg.get("label_smoothing") or 0.0), mixup=mixup,
                                  optimizer_kwargs=optimizer_kwargs)
    if hardware.wants_channels_last((cfg.get("hardware") or {}).get("channels_last"), kind, backbone):
        module.use_channels_last()

    stats = RunStats(monitor="val/acc", mode="max")
    stop = GracefulStop(str(run_dir / "checkpoints"))
    callbacks = [
        *build_all(cfg.get("callbacks"), "callbacks"),
        *strategy.callbacks(),
        *hardware.callbacks(cfg, kind),
        stats,
        ReseedEveryStep(cfg.seed),
        ResumeMidEpoch(),
        stop,
        FiniteLoss(check_every_n_steps=int(cfg.trainer.get("log_every_n_steps") or 50)),
        StoreRunInfo(resolved(cfg), datamodule.classes, data_config, weight_source),
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
        # Lightning's finders (tune=lr / batch_size) adjust module.lr / datamodule.batch_size.
        tuned = _tune(cfg, trainer, module, datamodule, run_dir) if cfg.get("tune") else {}
        fit_metrics = {}
        if cfg.get("train"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        trainable = trainable_summary(module.backbone)  # as trained (testing may re-freeze)
        test_metrics = {}
        if cfg.get("test"):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            ckpt = best or (None if cfg.get("train") else ckpt_path)
            if not ckpt:
                log.warning("no checkpoint callback: testing the final weights")
            results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
            test_metrics = dict(results[0]) if results else {}
        exported = None
        if cfg.get("export") and trainer.is_global_zero:  # the tested (best, or EMA) weights
            from xtune.models.export import export_model

            exported = str(export_model(strategy.export(module.backbone), cfg.get("export_dir") or run_dir / "export",
                                        datamodule.classes, data_config))
        summary = run_summary(cfg, trainer, module, datamodule, stats, {**fit_metrics, **test_metrics}, started)
        summary["model"]["weights"] = weight_source
        summary["finetune"] = {"strategy": strategy.name, **trainable}
        summary["tuned"] = tuned
        summary["export"] = exported
    except BaseException as error:
        if stop.saved is not None:  # SIGTERM, SIGUSR1/2 or Ctrl-C: stopped at a batch boundary
            summary = {"status": "interrupted", "epoch": trainer.current_epoch, "global_step": trainer.global_step,
                       "wall_time_s": round(time.time() - started, 2)}
            raise XtuneInterrupted(
                f"interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved {stop.saved}; "
                "run the same command again to continue (resume=auto)"
            ) from None
        summary = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
                   "wall_time_s": round(time.time() - started, 2)}
        raise
    finally:
        if trainer.is_global_zero:
            write_summary(run_dir, summary, stats.history)
    return summary


def _probe_optimizer(factory, backbone, kwargs) -> None:
    """Build the optimizer once now, so a wrong optim.* key fails before training starts."""
    try:
        factory(backbone, **kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise XtuneConfigError(f"optim: {' '.join(str(error).split())}") from None


def _tune(cfg: DictConfig, trainer, module, datamodule, run_dir: Path) -> dict:
    """Lightning's batch-size finder, then its learning-rate finder, as cfg.tune asks."""
    from pytorch_lightning.tuner import Tuner

    tuner, tuned = Tuner(trainer), {}
    if cfg.tune.get("scale_batch_size"):
        tuned["batch_size"] = tuner.scale_batch_size(module, datamodule=datamodule, **cfg.tune.scale_batch_size)
        log.info("batch-size finder: data.batch_size=%s", tuned["batch_size"])
    if cfg.tune.get("lr_find"):
        finder = tuner.lr_find(module, datamodule=datamodule, update_attr=True, attr_name="lr", **cfg.tune.lr_find)
        if finder is None or finder.suggestion() is None:
            raise XtuneConfigError(
                f"tune=lr found no learning rate after {len(finder.results.get('lr', [])) if finder else 0} steps: "
                "it needs tune.lr_find.num_training (>= 20) steps within trainer.max_epochs, and stops early when "
                "the loss explodes (tune.lr_find.early_stop_threshold=null keeps going)")
        tuned["lr"] = float(finder.suggestion())
        if trainer.is_global_zero:
            figure = finder.plot(suggest=True)
            figure.savefig(run_dir / "lr_find.png", dpi=100)
        log.info("learning-rate finder: optim.lr=%.3g", tuned["lr"])
    return tuned
