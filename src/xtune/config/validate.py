"""Cheap checks of a composed config, before any heavy import: one clear line per mistake.

Hydra already refuses unknown groups and keys; these catch values that compose fine but make no
sense (batch_size=0, lr=-1, a missing data.root, a checkpoint path that is not there).
"""

from __future__ import annotations

import numbers
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xtune.errors import XtuneConfigError

from xtune.hardware.profile import PRECISIONS as BY_DEVICE  # noqa: E402 - torch-free module

#: every precision some device runs (hardware/profile.py decides which device runs which), plus
#: `auto` and Lightning's short spellings
PRECISIONS = {"auto", "64", "32", *(p for device in BY_DEVICE.values() for p in device)}


#: keys that moved, and what to type instead (one name per knob): refused whether Hydra meets them
#: (`key=...`: explain.py) or a `+key=...` adds them, which timm would otherwise ignore in silence
#: (with a param_group_fn, as finetune=full with a backbone_lr_scale passes, it drops layer_decay)
MOVED = {
    "optim.layer_decay": "finetune=layer_decay finetune.decay=<value> (layer decay is a fine-tuning strategy)",
    "optim.layer_decay_min_scale": "finetune=layer_decay finetune.min_scale=<value>",
}


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _number(cfg, key, *, integer=False, low=None, low_open=False, high=None, high_open=False,
            optional=False, hint=""):
    if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
        return
    value = _get(cfg, key)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    wanted = f"{kind} {' and '.join(bounds)}".strip()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise XtuneConfigError(f"{key}={value}: expected {wanted}{hint}")


def _schema_bounds(cfg: DictConfig, node: str, schema) -> None:
    """Every number of `node` within the bounds its schema declares (xtune.config.schema)."""
    import dataclasses

    for item in dataclasses.fields(schema):
        if "bounds" in item.metadata:
            integer = item.type in ("int", "Optional[int]")
            _number(cfg, f"{node}.{item.name}", integer=integer, optional=item.type.startswith("Optional"),
                    **item.metadata["bounds"])


def _common(cfg: DictConfig) -> None:
    from xtune.config.schema import DataOptions

    _schema_bounds(cfg, "data", DataOptions)
    fractions = (_get(cfg, "data.val_fraction") or 0) + (_get(cfg, "data.test_fraction") or 0)
    if fractions >= 1:
        raise XtuneConfigError(
            f"data.val_fraction + data.test_fraction = {fractions:g}: leave some data to train on (< 1)"
        )
    _data_root(cfg)
    name = _get(cfg, "model.name")
    if "model" in cfg and (not isinstance(name, str) or not name.strip()):
        raise XtuneConfigError(f"model.name={name}: expected a timm model name, e.g. resnet50")
    weights = _get(cfg, "model.weights")
    if weights and not str(weights).startswith("package:"):  # package: is found when the model is built
        path = Path(str(weights)).expanduser()
        if not path.exists():
            raise XtuneConfigError(
                f"model.weights={weights}: no such file; pass a .safetensors/.pth/.bin weights file "
                "or model.weights=null"
            )
    for key in ("model.drop_rate", "model.drop_path_rate"):
        _number(cfg, key, low=0, high=1, high_open=True, optional=True)
    _number(cfg, "trainer.accumulate_grad_batches", integer=True, low=1, optional=True)
    _number(cfg, "trainer.gradient_clip_val", low=0, low_open=True, optional=True)
    precision = _get(cfg, "trainer.precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise XtuneConfigError(
            f"trainer.precision={precision}: expected one of {', '.join(sorted(PRECISIONS))}"
        )
    devices = _get(cfg, "trainer.devices")
    if isinstance(devices, numbers.Integral) and not isinstance(devices, bool) and devices == 0:
        raise XtuneConfigError("trainer.devices=0: expected >= 1, -1 (all), 'auto' or a list of ids")
    _number(cfg, "seed", integer=True, low=0, optional=True)


def _data_root(cfg: DictConfig) -> None:
    """Sources whose function requires `root` (imagefolder) need data.root."""
    target = _get(cfg, "data.source._target_")
    if not target or _get(cfg, "data.root") is not None:
        return
    import inspect

    from hydra.utils import get_method

    try:
        parameter = inspect.signature(get_method(target)).parameters.get("root")
    except Exception:  # noqa: BLE001 - a bad target is reported when it is built
        return
    if parameter is not None and parameter.default is inspect.Parameter.empty:
        raise XtuneConfigError(
            f"data.root is required for {target.rsplit('.', 1)[-1]} data: pass data.root=/path/to/images "
            "(ROOT/<class>/*.jpg, or ROOT/train|val|test/<class>/*.jpg)"
        )


def _checkpoint(cfg: DictConfig, required: bool) -> None:
    path = _get(cfg, "ckpt_path")
    if path is None:
        if required:
            raise XtuneConfigError("ckpt_path is required: pass ckpt_path=RUN/checkpoints/best.ckpt")
        return
    file = Path(str(path)).expanduser()
    if not file.exists():
        raise XtuneConfigError(
            f"ckpt_path={path}: no such file; pass a checkpoint written by train.py, "
            "e.g. logs/train/runs/RUN/checkpoints/last.ckpt"
        )
    if file.is_dir():
        raise XtuneConfigError(f"ckpt_path={path} is a directory; pass the .ckpt file inside it")


def validate_train(cfg: DictConfig) -> None:
    _common(cfg)
    for key, instead in MOVED.items():
        if OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            raise XtuneConfigError(f"{key} is not a key any more: use {instead}")
    _number(cfg, "optim.lr", low=0, low_open=True)
    _number(cfg, "optim.weight_decay", low=0, optional=True)
    _number(cfg, "optim.momentum", low=0, high=1, high_open=True, optional=True)
    _number(cfg, "scheduler.warmup_epochs", low=0, optional=True)
    _number(cfg, "scheduler.min_lr", low=0, optional=True)
    _number(cfg, "scheduler.warmup_lr", low=0, optional=True)
    max_steps = _get(cfg, "trainer.max_steps")
    if not (isinstance(max_steps, int) and max_steps > 0):
        _number(cfg, "trainer.max_epochs", integer=True, low=1,
                hint=" (or set trainer.max_steps)")
    if not _get(cfg, "train") and not _get(cfg, "test"):
        raise XtuneConfigError("train=false and test=false: nothing to do; enable one of them")
    _checkpoint(cfg, required=not _get(cfg, "train"))


def validate_eval(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise XtuneConfigError("ckpt_path is required: pass ckpt_path=RUN/checkpoints/best.ckpt")
    _checkpoint(cfg, required=True)
    _common(cfg)
