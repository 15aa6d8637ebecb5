"""Schemas of the config groups, declared once (registered in Hydra's ConfigStore). Torch-free.

`DataOptions` is the schema Hydra composes `configs/data/*.yaml` against (registered in its
ConfigStore as `data/schema`, the first default of data/digits.yaml), the keyword arguments
ImageDataModule accepts, and the bounds xtune.config.validate checks before any heavy import.
A new data key is added here; its YAML line is documentation. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional


def bounds(low=None, high=None, low_open=False, high_open=False) -> dict:
    """Field metadata for xtune.config.validate: the closed or open range a number must lie in."""
    return {"bounds": {"low": low, "high": high, "low_open": low_open, "high_open": high_open}}


@dataclass
class DataOptions:
    _target_: str = "xtune.data.ImageDataModule"
    source: Any = None  # a function returning the splits and class names (xtune/data/sources.py)
    root: Optional[str] = None  # where the data lives, for sources that read files
    classes: Optional[List[Any]] = None  # keep only these classes (by name), relabelled in this order
    batch_size: int = field(default=64, metadata=bounds(low=1))
    eval_batch_size: Optional[int] = field(default=None, metadata=bounds(low=1))  # None: batch_size
    num_workers: Optional[int] = field(default=0, metadata=bounds(low=0))  # None: min(8, CPU count)
    pin_memory: bool = False
    persistent_workers: bool = True  # workers live across epochs (with num_workers > 0)
    # loader workers run this many Unix nice levels below the training process (0: the same)
    worker_nice: int = field(default=10, metadata=bounds(low=0, high=19))
    drop_last: bool = False  # drop every ragged last training batch (one of 1 image always is)
    # preprocessing; None takes the backbone's pretrained data config (timm resolve_data_config)
    image_size: Optional[int] = field(default=None, metadata=bounds(low=8))
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    interpolation: Optional[str] = None
    crop_pct: Optional[float] = field(default=None, metadata=bounds(low=0, high=1, low_open=True))
    # training augmentation: keyword arguments of timm.data.create_transform(is_training=True);
    # re_prob / re_mode / re_count (random erasing) act on whole batches (xtune.data.preprocess)
    augment: Dict[str, Any] = field(default_factory=dict)
    # splits a source lacks are carved from train, stratified, with split_seed
    val_fraction: float = field(default=0.1, metadata=bounds(low=0, high=1, high_open=True))
    test_fraction: float = field(default=0.2, metadata=bounds(low=0, high=1, high_open=True))
    train_fraction: float = field(default=1.0, metadata=bounds(low=0, high=1, low_open=True))  # label budgets
    split_seed: int = 0
    shuffle_seed: int = 0  # the training order depends only on (this seed, epoch): resume-proof
    test_only: bool = False  # every sample is a test sample (eval.py on another folder)


def option_names() -> list[str]:
    return [f.name for f in fields(DataOptions) if f.name != "_target_"]


def register() -> None:
    """Make the schema composable as data/schema (xtune.config.resolvers.register calls this)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="data", name="schema", node=DataOptions)
