"""Where pretrained weights come from: the Hugging Face Hub cache, the Hub, or a local file.

timm downloads weights itself, but with no network huggingface_hub retries for ~46 s before
failing. We look in the cache first and probe the Hub with a short timeout, so an offline
machine gets one clear line within seconds.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
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


def read_state_dict(path: Path) -> dict:
    """A local weights file as a state dict, read by timm (safetensors, torch, EMA-aware)."""
    from timm.models import load_state_dict

    if path.is_dir():  # an export directory (model.safetensors + config.json)
        found = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not found:
            raise XtuneConfigError(f"model.weights={path} is a folder without model.safetensors or pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise XtuneConfigError(
            f"model.weights={path}: no such file; pass a {'/'.join(WEIGHT_SUFFIXES)} weights file"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise XtuneConfigError(
            f"model.weights={path}: expected a {'/'.join(WEIGHT_SUFFIXES)} file, got '{path.suffix}'"
        )
    try:
        state = load_state_dict(str(path))
    except Exception as error:  # noqa: BLE001 - any reader failure means the same to the user
        raise XtuneConfigError(
            f"model.weights={path} cannot be read as weights ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'corrupt file'})"
        ) from None
    if not isinstance(state, dict) or not state:
        raise XtuneConfigError(f"model.weights={path} holds no state dict")
    if all(k.startswith("backbone.") for k in state):  # an xtune .ckpt: strip the module prefix
        state = {k[len("backbone."):]: v for k, v in state.items()}
    return state
