"""OmegaConf resolvers used by the configs (registered by the CLI before composing)."""

import os
from datetime import datetime

from omegaconf import OmegaConf


def _relpath(path: str, start: str) -> str:
    """`path` relative to `start` (run names: train/runs/2026-11-28_10-00-00)."""
    return os.path.relpath(path, start)


def _cwd() -> str:
    """Where the command was started. Hydra's `${hydra:runtime.cwd}` says the same inside a job,
    but cannot be resolved while Hydra builds a sweep directory (HydraConfig is not set yet), so
    every `-m` run failed with it; the job keeps the launcher's working directory (chdir: false)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.get("cwd")
        if cwd:
            return str(cwd)
    return os.getcwd()


def in_submitit() -> bool:
    """Is this process a job that submitit started (a hydra/launcher=slurm sweep's job)?"""
    return "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_FOLDER" in os.environ


def _run_name() -> str:
    """The default run name: a sbatch job's id (stable across its requeues), else the time."""
    if os.environ.get("SLURM_JOB_ID") and not in_submitit():
        array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{array[0]}_{array[1]}" if all(array) else f"slurm-{os.environ['SLURM_JOB_ID']}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _sweep_group() -> str:
    """The W&B group of a job: its sweep directory (relative to the log dir), or "" for single runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return ""
    return os.path.basename(os.path.normpath(str(hydra_cfg.sweep.dir)))


def register() -> None:
    from xtune.config import schema

    schema.register()
    if not OmegaConf.has_resolver("xtune.cwd"):
        OmegaConf.register_new_resolver("xtune.cwd", _cwd)
    if not OmegaConf.has_resolver("xtune.relpath"):
        OmegaConf.register_new_resolver("xtune.relpath", _relpath)
    if not OmegaConf.has_resolver("xtune.run_name"):
        OmegaConf.register_new_resolver("xtune.run_name", _run_name, use_cache=True)
    if not OmegaConf.has_resolver("xtune.sweep_group"):
        OmegaConf.register_new_resolver("xtune.sweep_group", _sweep_group)
