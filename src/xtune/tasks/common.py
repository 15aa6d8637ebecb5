"""Building blocks shared by the tasks: the resolved config record and the Trainer."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xtune.config.instantiate import build
from xtune.report import redact

log = logging.getLogger("xtune")


def resolved(cfg: DictConfig) -> dict:
    """The whole config with interpolations resolved and secret-looking values redacted."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


def save_config(cfg: DictConfig, run_dir: Path) -> dict:
    from xtune.atomic import write_text

    container = resolved(cfg)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(container)))
    return container


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list):
    """The Lightning Trainer of the chosen hardware profile, with our callbacks and loggers."""
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from xtune.hardware.checkpoint_io import use_atomic_checkpoints

    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    plugins = []
    if SLURMEnvironment.detect():
        # xtune's GracefulStop handles SLURM's signals (save last.ckpt, requeue): not Lightning's
        # auto-requeue, which would save a second checkpoint of its own
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=plugins or None)
    use_atomic_checkpoints(trainer)  # a kill during a save never corrupts last.ckpt
    return trainer
