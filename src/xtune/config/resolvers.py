"""OmegaConf resolvers used by the configs (registered by the CLI before composing)."""

import os

from omegaconf import OmegaConf


def _relpath(path: str, start: str) -> str:
    """`path` relative to `start` (run names: train/runs/2026-11-28_10-00-00)."""
    return os.path.relpath(path, start)


def register() -> None:
    if not OmegaConf.has_resolver("xtune.relpath"):
        OmegaConf.register_new_resolver("xtune.relpath", _relpath)
