"""timm backbones with weights from the Hub cache, the Hub, a local file, or random init."""

from __future__ import annotations

import difflib
from pathlib import Path

from xtune.errors import XtuneConfigError
from xtune.models import weights as W


def check_model_name(name: str) -> None:
    """Unknown timm names get one line with the closest real names."""
    import timm

    if timm.is_model(name):
        return
    arch = name.split(".")[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "no close name"
    raise XtuneConfigError(
        f"unknown timm model '{name}' ({hint}); list models with "
        f"python -c \"import timm; print(timm.list_models('*{arch[:5]}*'))\""
    )


def _classifier_keys(model) -> list[str]:
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else names
    return [f"{n}.{p}" for n in names for p in ("weight", "bias")]


def _check_fits(name: str, state: dict, path: Path, num_classes: int, kwargs: dict) -> int:
    """Fail clearly when a local file's tensors are not this model's; return its head's rows."""
    import timm
    import torch

    try:
        with torch.device("meta"):  # no memory, no init cost: only the names and shapes matter
            probe = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except Exception:  # noqa: BLE001 - a model whose init cannot run on meta
        probe = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    head = set(_classifier_keys(probe))
    expected = {k for k in probe.state_dict() if not k.endswith("num_batches_tracked")} - head
    missing = sorted(expected - set(state))
    if missing:
        raise XtuneConfigError(
            f"model.weights={path} does not fit {name}: {len(missing)} of its {len(expected)} "
            f"tensors are missing from the file (e.g. {missing[0]}); pass weights saved from "
            f"{name} (timm format) or pick the matching model.name"
        )
    head_weight = next((state[k] for k in sorted(head) if k.endswith("weight") and k in state), None)
    return int(head_weight.shape[0]) if head_weight is not None else 0


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    weights: str | None = None,
    image_size: int | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend: str | None = None,
    **kwargs,
):
    """`timm.create_model(name, num_classes=...)` with weights from, in this order of choice:

    - `weights`: a local .safetensors/.pth/.bin file in timm's format, loaded through timm's own
      pretrained path (its filters apply); its classifier is kept when it has `num_classes`
      outputs, otherwise re-initialised;
    - `pretrained=True`: timm's pretrained tag, from the Hugging Face cache, else the Hub;
    - `pretrained=False`: random init.

    `image_size` builds models with a fixed input size (ViTs) for that size, so their position
    embeddings are resampled once when the weights load, not at every step. `compile` applies
    torch.compile to the backbone in place (`nn.Module.compile`), so state dict keys stay plain.
    Other keyword arguments go to timm.create_model; None means "the model's default". The
    returned model carries `weight_source` (a string for the run summary).
    """
    import timm

    check_model_name(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if image_size and _fixed_input_size(name):
        kwargs.setdefault("img_size", image_size)
    overlay, source = None, "none (random init)"
    if weights:
        path = Path(weights).expanduser().resolve()
        state = W.read_state_dict(path)
        head_rows = _check_fits(name, state, path, num_classes, kwargs)
        overlay, source = dict(state_dict=state, num_classes=head_rows), f"file:{path}"
    elif pretrained:
        cfg = W.pretrained_cfg(name)
        cached = W.cached_file(cfg)
        if cached:
            overlay = dict(file=cached)
        elif not W.hub_reachable():
            raise W.unavailable(cfg)
        source = f"hub:{W.tag_of(cfg)}"
    try:
        model = timm.create_model(
            name,
            pretrained=bool(weights or pretrained),
            num_classes=num_classes,
            pretrained_cfg_overlay=overlay,
            **kwargs,
        )
    except TypeError as error:
        raise XtuneConfigError(f"timm model '{name}' rejects an argument ({error}); remove it from model.*") from None
    except RuntimeError as error:
        if not weights:
            raise
        first = str(error).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0])
        raise XtuneConfigError(f"model.weights={weights} does not fit {name}: {detail}") from None
    model.weight_source = source
    if compile:
        options = {"mode": compile_mode, "backend": compile_backend}
        model.compile(**{key: value for key, value in options.items() if value})
    return model


def _fixed_input_size(name: str) -> bool:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag: reported where the weights are resolved
        return False
    return bool(cfg and cfg.fixed_input_size)


def prefetch(name: str) -> str:
    """Download `name`'s pretrained weights into the cache (no-op when cached); return the file."""
    import timm

    check_model_name(name)
    cfg = W.pretrained_cfg(name)
    cached = W.cached_file(cfg)
    if cached:
        return cached
    if not W.hub_reachable():
        raise W.unavailable(cfg)
    timm.create_model(name, pretrained=True)
    cached = W.cached_file(cfg)
    if cached is None:
        raise XtuneConfigError(f"downloaded {W.tag_of(cfg)} but found no file in the cache")
    return cached
