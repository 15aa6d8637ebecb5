"""Building blocks shared by the tasks: instantiate with clear errors, loggers, callbacks."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xtune.errors import XtuneConfigError, XtuneError
from xtune.report import redact

log = logging.getLogger("xtune")


def build(node, group: str, **kwargs):
    """hydra.utils.instantiate, with a wrong argument or target reported as one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, XtuneError):
            raise cause from None
        if isinstance(cause, (TypeError, ValueError, ImportError, AttributeError, MisconfigurationException)):
            message = " ".join(str(cause).split())
            raise XtuneConfigError(f"{group}: {message}") from None
        if cause is None:  # Hydra could not even locate the target
            raise XtuneConfigError(f"{group}: {' '.join(str(error).split())}") from None
        raise


def build_all(node: DictConfig | None, group: str) -> list:
    """Instantiate each `_target_` entry of a group such as callbacks or logger."""
    if not node:
        return []
    return [build(entry, f"{group}.{key}") for key, entry in node.items() if entry and "_target_" in entry]


def resolved(cfg: DictConfig) -> dict:
    """The whole config with interpolations resolved and secret-looking values redacted."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


def save_config(cfg: DictConfig, run_dir: Path) -> dict:
    container = resolved(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(container)))
    return container


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list):
    """The Lightning Trainer of the chosen hardware profile, with our callbacks and loggers."""
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from xtune.launch.preemption import AtomicCheckpointIO

    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    plugins = []
    strategy = cfg.trainer.get("strategy")
    if cfg.trainer.get("accelerator") in ("cpu", "gpu", "cuda", "auto", "mps") and not OmegaConf.is_config(strategy) \
            and "fsdp" not in str(strategy) and "xla" not in str(strategy):
        plugins.append(AtomicCheckpointIO())  # a kill during a save never corrupts last.ckpt
    if SLURMEnvironment.detect():
        # xtune's GracefulStop handles SLURM's signals (save last.ckpt, requeue): not Lightning's
        # auto-requeue, which would save a second checkpoint of its own
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=plugins or None)
