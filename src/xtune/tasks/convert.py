"""xtune-convert: weights in another layout as a timm-loadable folder whose config.json carries
the preprocessing the weights expect.

timm's save_for_hf (through xtune's export_model) writes the folder; what is ours is reading the
foreign layouts (models/convert.py) and choosing the preprocessing: given values, else what the
weights' layout says (e.g. EfficientNet-Lite: mean = std = 0.5), else timm's default for the model.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xtune.errors import XtuneConfigError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")


def convert(cfg: DictConfig) -> str:
    preprocessing = _validate(cfg)
    out_dir = Path(cfg.out_dir).expanduser() if cfg.get("out_dir") else Path(_run_dir(cfg))
    if (out_dir / "model.safetensors").exists():
        raise XtuneConfigError(f"out_dir={out_dir} already holds model.safetensors; pass another out_dir "
                               "(or remove that folder)")

    from timm.data import ImageNetInfo, resolve_model_data_config

    from xtune.models.backbone import create_backbone
    from xtune.models.export import export_model

    # num_classes=None keeps the file's own classifier (e.g. ImageNet's 1000 classes); other model.*
    # keys are timm.create_model arguments (+model.bn_eps=0.001), recorded in config.json's model_args
    kwargs = {key: value for key, value in OmegaConf.to_container(cfg.model).items()
              if key not in ("name", "weights")}
    model = create_backbone(cfg.model.name, num_classes=None, pretrained=False, weights=str(cfg.model.weights),
                            **kwargs)
    for key in ("tag", "license"):  # they describe timm's default weights for the name, not these
        model.pretrained_cfg.pop(key, None)
    # resolve_model_data_config reads the model's pretrained_cfg: the preprocessing that came
    # with the weights (layout, config.json, checkpoint) over timm's default for the architecture
    data_config = {**resolve_model_data_config(model), **preprocessing}
    classes = ImageNetInfo().label_names() if model.num_classes == 1000 else []
    path = export_model(model, out_dir, classes, data_config)  # files readable as any the user writes
    shown = ", ".join(f"{key}={_plain(data_config[key])}" for key in ("mean", "std", "interpolation", "input_size"))
    print(f"converted {model.weight_source.removeprefix('file:')} -> {path} (+ config.json: {shown}); "
          f"fine-tune with model.name={cfg.model.name} model.weights={out_dir}")
    return str(path)


def _validate(cfg: DictConfig) -> dict:
    """Cheap checks before any import; returns the preprocessing that was given."""
    for key, example in (("model.weights", "/path/to/weights.pth"), ("model.name", "tf_efficientnet_lite0")):
        if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) in (None, "", "???"):
            raise XtuneConfigError(f"{key} is required: pass {key}={example}")
    weights = str(cfg.model.weights)
    if not weights.startswith("package:") and not Path(weights).expanduser().exists():
        raise XtuneConfigError(f"model.weights={cfg.model.weights}: no such file; pass the weights file "
                               "(.pth/.pt/.bin/.safetensors/.ckpt) or export folder to convert")
    given = {}
    for key in ("mean", "std"):
        value = cfg.get(key)
        if value is None:
            continue
        values = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise XtuneConfigError(f"{key}={_plain(value)}: expected 3 numbers (one per RGB channel), "
                                   f"e.g. {key}=[0.5,0.5,0.5]")
        if key == "std" and min(values) <= 0:
            raise XtuneConfigError(f"std={_plain(value)}: expected numbers > 0")
        given[key] = tuple(float(v) for v in values)
    if cfg.get("interpolation") is not None:
        if cfg.interpolation not in INTERPOLATIONS:
            raise XtuneConfigError(f"interpolation={cfg.interpolation}: expected one of {', '.join(INTERPOLATIONS)}")
        given["interpolation"] = str(cfg.interpolation)
    size = cfg.get("input_size")
    if size is not None:
        size = list(size) if OmegaConf.is_list(size) else [3, size, size]
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise XtuneConfigError(f"input_size={_plain(cfg.input_size)}: expected a size (224) or [3, 224, 224]")
        given["input_size"] = tuple(size)
    if cfg.get("crop_pct") is not None:
        if not 0 < float(cfg.crop_pct) <= 1:
            raise XtuneConfigError(f"crop_pct={cfg.crop_pct}: expected a number in (0, 1]")
        given["crop_pct"] = float(cfg.crop_pct)
    return given


def _run_dir(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def _plain(value):
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return value
