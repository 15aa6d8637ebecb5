"""Evaluate a checkpoint on the test split, rebuilt from the config stored inside it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from xtune.config.printing import print_config_tree
from xtune.config.validate import validate_eval
from xtune.errors import XtuneDataError

log = logging.getLogger("xtune")

#: top-level keys an eval command line may change in the stored training config
OVERRIDABLE = ("data", "model")
#: data keys that change how data is loaded, not which data: the stored test split is kept
LOADING = ("data.batch_size", "data.eval_batch_size", "data.num_workers", "data.pin_memory", "data.persistent_workers")


def other_data(overrides: list[str]) -> bool:
    """Does this eval command point at other data than the run trained on (data=, data.root=, ...)?"""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    return any(k.split(".")[0] == "data" and k not in LOADING for k in keys)


def stored_config_with_overrides(stored: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The training config stored in the checkpoint, with this command's data/model overrides.

    `data=imagefolder` replaces the whole data config with the eval composition; `data.root=X`
    sets one key. Everything else (trainer, logger, paths) is this command's own.
    """
    run = OmegaConf.create(stored)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] not in OVERRIDABLE:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        with open_dict(run):
            if "." not in key:
                run[key] = OmegaConf.to_container(value, resolve=True) if value is not None else None
            else:
                OmegaConf.update(run, key, value, force_add=True)
    return run


def evaluate(cfg: DictConfig) -> float | None:
    started = time.time()
    validate_eval(cfg)
    from xtune.imports import import_framework

    import_framework()
    from hydra.core.hydra_config import HydraConfig

    from xtune import hardware
    from xtune.checkpoint import module_from_checkpoint, read_checkpoint
    from xtune.evaluation_report import EvaluationReport
    from xtune.loggers import finish_wandb
    from xtune.report import final_line, run_summary, write_summary
    from xtune.config.instantiate import build, build_all
    from xtune.tasks.common import build_trainer, save_config

    kind = hardware.prepare(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    stored = checkpoint["xtune"]
    overrides = list(HydraConfig.get().overrides.task)
    run = stored_config_with_overrides(stored["config"], cfg, overrides)
    # Another folder is evaluated whole (or its test/ split): the run's own split fractions mean
    # nothing there. The run's own data keeps its stored test split, so the test metric repeats.
    if other_data(overrides):
        with open_dict(run):
            run.data.test_only = True
            # and is seen as the model was trained to see it: the run's own preprocessing,
            # unless this command sets a key of it (data=imagefolder would otherwise bring its own)
            given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
            trained = dict(stored.get("data_config") or {})
            if "input_size" in trained:
                trained["image_size"] = trained["input_size"][-1]
            for key in ("image_size", "mean", "std", "interpolation", "crop_pct"):
                if key in trained and f"data.{key}" not in given:
                    run.data[key] = trained[key]
    # what this evaluation runs with: the checkpoint's model and data, this command's trainer
    shown = OmegaConf.create({
        "ckpt_path": cfg.ckpt_path, "data": run.data, "model": run.model,
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
    })
    print_config_tree(shown)

    datamodule = build(run.data, "data")
    if datamodule.classes != list(stored["classes"]):
        raise XtuneDataError(
            f"the checkpoint was trained on {len(stored['classes'])} classes {stored['classes'][:6]}, "
            f"this data has {len(datamodule.classes)} {datamodule.classes[:6]}; evaluate on data "
            "with the same class folders"
        )
    # Weights come from the checkpoint (never from the Hub), into the model the run trained.
    module, _ = module_from_checkpoint(checkpoint, run, path=cfg.ckpt_path)
    backbone = module.backbone
    backbone.weight_source = f"checkpoint:{Path(cfg.ckpt_path).expanduser().resolve()}"
    data_config = datamodule.resolve_transforms(backbone)
    module.preprocess = datamodule.batch_preprocess  # uint8 batches, normalised on the device

    hardware.apply_memory_format(cfg, kind, module)
    loggers = build_all(cfg.get("logger"), "logger")
    run_dir = Path(cfg.paths.output_dir)
    # per-class scores, confusion matrix and mistakes, beside summary.json
    report = EvaluationReport(run_dir, classes=datamodule.classes, mean=data_config["mean"], std=data_config["std"])
    trainer = build_trainer(cfg, [*hardware.callbacks(cfg, kind), report], loggers)
    save_config(shown, run_dir)

    results = trainer.test(module, datamodule=datamodule)
    metrics = dict(results[0]) if results else {}
    summary = run_summary(cfg_for_summary(cfg, run), trainer, module, datamodule, None, metrics, started)
    summary["checkpoint"] = str(Path(cfg.ckpt_path).expanduser().resolve())
    summary.pop("best")
    summary["evaluation"] = report.summary()
    if trainer.is_global_zero:
        write_summary(run_dir, summary)
        print(final_line(summary, finish_wandb()), flush=True)
    return metrics.get("test/acc")


def cfg_for_summary(cfg: DictConfig, run: DictConfig) -> DictConfig:
    """This command's config with the model/data/seed the checkpoint was trained with."""
    merged = OmegaConf.create({"task_name": cfg.task_name, "paths": {"output_dir": cfg.paths.output_dir},
                               "model": run.model, "seed": run.get("seed")})
    return merged
