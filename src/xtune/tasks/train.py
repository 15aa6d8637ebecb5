"""The training recipe: build in dependency order, fit, test the best checkpoint, report.

Reads top to bottom. Called by `python train.py` / `xtune-train` (xtune.cli) with the composed
config; returns the value of `optimized_metric` for sweepers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from xtune.config.printing import print_config_tree
from xtune.config.validate import validate_train
from xtune.errors import XtuneConfigError
from xtune.hardware.profile import is_rank_zero
from xtune.launch.resume import resume_point, truncate_metrics
from xtune.tasks.common import resolved

log = logging.getLogger("xtune")


def train(cfg: DictConfig) -> float | None:
    from xtune.hardware.profile import DistributedScope

    from xtune.loggers import finish_wandb
    from xtune.report import final_line

    with DistributedScope():  # the next job of a multirun starts from a clean slate
        summary = run_training(cfg)
    if is_rank_zero():
        print(final_line(summary, finish_wandb()), flush=True)
    metric = cfg.get("optimized_metric")
    value = summary["metrics"].get(metric) if metric else None
    if metric and value is None:
        log.warning("optimized_metric %s was not logged; logged: %s", metric, ", ".join(sorted(summary["metrics"])))
    return value


def run_training(cfg: DictConfig, extra_callbacks=()) -> dict:
    """Fit and test as `cfg` says; write the run directory; return the summary."""
    from xtune.report import Timeline

    timeline = Timeline()
    started = timeline.marks[1][1]
    # Cheap checks first: a typo costs a second, not a model build.
    validate_train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    # A requeued job, or a re-run of a named run, continues where it stopped (resume=auto).
    ckpt_path, finished = resume_point(cfg, run_dir, resolved(cfg))
    if finished is not None:
        log.info("run directory %s already holds a completed run: returning its result "
                 "(another run_name trains anew)", run_dir)
        return finished
    if is_rank_zero():
        print_config_tree(cfg)
    from xtune.imports import import_framework

    import_framework()
    import pytorch_lightning as pl

    from xtune import hardware
    from xtune.callbacks import FiniteLoss, ReseedEveryStep, RunStats, StoreRunInfo
    from xtune.config.instantiate import build, build_all
    from xtune.evaluation_report import EvaluationReport
    from xtune.launch.preemption import GracefulStop, ResumeMidEpoch
    from xtune.models.finetune import Strategy, trainable_summary
    from xtune.models.module import ClassificationModule
    from xtune.report import RunRecord, run_summary
    from xtune.tasks.common import build_trainer, save_config

    # The hardware first: a missing GPU or TPU, or a precision it cannot run, fails in seconds.
    kind = hardware.prepare(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    timeline.mark("checks")

    # Data next: its classes decide the size of the model's head.
    datamodule = build(cfg.data, "data")
    timeline.mark("data")
    # The backbone with its weights (Hub cache, Hub, local file or random), sized for these classes.
    backbone = build(cfg.model, "model")(num_classes=datamodule.num_classes)
    # Preprocessing follows the backbone's own pretrained data config (timm), not ImageNet constants.
    data_config = datamodule.resolve_transforms(backbone)
    weight_source, data_fingerprint = backbone.weight_source, datamodule.fingerprint()
    # A resumed run must continue the same model on the same data; metrics.csv keeps only the
    # rows logged before the checkpoint (none for a fresh start).
    truncate_metrics(run_dir / "metrics.csv", _resumable(ckpt_path, cfg, datamodule.classes, data_fingerprint))

    # The fine-tuning strategy decides what trains (freezing, LoRA adapters) and at which LR.
    strategy = build(cfg.finetune, "finetune") if cfg.get("finetune") else Strategy()
    backbone = strategy.prepare(backbone)
    optimizer = build(cfg.optim, "optim")
    optimizer_kwargs = {**hardware.optimizer_kwargs(cfg, kind, optimizer),  # the device's fused step
                        **strategy.optimizer_kwargs(backbone, float(cfg.optim.get("weight_decay") or 0.0))}
    scheduler = build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    _probe_optimizer(optimizer, backbone, optimizer_kwargs)
    mixup = build(cfg.mixup, "mixup") if cfg.get("mixup") else None
    module = ClassificationModule(backbone, datamodule.num_classes, optimizer, scheduler,
                                  label_smoothing=float(cfg.get("label_smoothing") or 0.0), mixup=mixup,
                                  optimizer_kwargs=optimizer_kwargs, preprocess=datamodule.batch_preprocess)
    hardware.apply_memory_format(cfg, kind, module)
    timeline.mark("model")

    # The Trainer last: it needs every callback, and the callbacks need the data and the model.
    stats = RunStats(monitor="val/acc", mode="max")
    # per-class scores, confusion matrix and mistakes of the test pass, beside summary.json
    report = EvaluationReport(run_dir, classes=datamodule.classes, mean=data_config["mean"], std=data_config["std"])
    stop = GracefulStop(str(run_dir / "checkpoints"))
    callbacks = [
        *build_all(cfg.get("callbacks"), "callbacks"),
        *strategy.callbacks(),
        *hardware.callbacks(cfg, kind),
        stats,
        report,
        ReseedEveryStep(cfg.seed),
        ResumeMidEpoch(),
        stop,
        FiniteLoss(check_every_n_steps=int(cfg.trainer.get("log_every_n_steps") or 50)),
        StoreRunInfo(resolved(cfg), datamodule.classes, data_config, weight_source, data_fingerprint),
        *extra_callbacks,
    ]
    loggers = build_all(cfg.get("logger"), "logger")
    trainer = build_trainer(cfg, callbacks, loggers)
    hardware.prepare_ddp_relaunch()  # ranks > 0 of a DDP run re-run this exact job
    if trainer.is_global_zero:
        config = save_config(cfg, run_dir)
        for logger in loggers:
            logger.log_hyperparams(config)
    timeline.mark("trainer")

    # summary.json says how the run ended: completed, interrupted (resumable) or failed
    with RunRecord(run_dir, trainer, stats, stop, started) as record:
        # Lightning's finders (tune=lr / batch_size) adjust module.lr / datamodule.batch_size.
        tuned = _tune(cfg, trainer, module, datamodule, run_dir) if cfg.get("tune") else {}
        fit_metrics = {}
        if cfg.get("train"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            # at the fit's end; a run resumed with its fit done (stopped while testing) logs none:
            # then those its checkpoint kept
            fit_metrics = dict(stats.fit_metrics)
        trainable = trainable_summary(module.backbone)  # as trained (testing may re-freeze)
        if stats.first_step_at:
            timeline.mark("first_step", stats.first_step_at)
            timeline.mark("last_step", stats.last_step_at)
        test_metrics = _test(cfg, trainer, module, datamodule, ckpt_path) if cfg.get("test") else {}
        timeline.mark("tested")
        exported = None
        if cfg.get("export") and trainer.is_global_zero:  # the tested (best, or EMA) weights
            from xtune.models.export import export_model

            exported = str(export_model(strategy.export(module.backbone), cfg.get("export_dir") or run_dir / "export",
                                        datamodule.classes, data_config))
        record.summary = run_summary(cfg, trainer, module, datamodule, stats, {**fit_metrics, **test_metrics},
                                     started, timeline)
        record.summary.update(finetune={"strategy": strategy.name, **trainable}, tuned=tuned, export=exported,
                              evaluation=report.summary())
        record.summary["model"]["weights"] = weight_source
    return record.summary


def _resumable(ckpt_path, cfg: DictConfig, classes: list, fingerprint: dict) -> int:
    """The step a resumed run continues from (0 for a fresh start), after checking the checkpoint
    was trained with this model on this data."""
    from xtune.checkpoint import check_resume_fits, read_checkpoint

    if not ckpt_path:
        return 0
    checkpoint = read_checkpoint(ckpt_path)
    check_resume_fits(checkpoint, ckpt_path, cfg.model.name, classes, fingerprint)
    return int(checkpoint.get("global_step", 0))


def _test(cfg: DictConfig, trainer, module, datamodule, ckpt_path) -> dict:
    """Test the best checkpoint (the final weights when no checkpoint callback ran)."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best or (None if cfg.get("train") else ckpt_path)
    if not ckpt:
        log.warning("no checkpoint callback: testing the final weights")
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
    return dict(results[0]) if results else {}


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
