"""timm backbones with weights from the Hub cache, the Hub, a local file, or random init.

A local file is read in any layout models/convert.py knows, and checked to fit before timm loads
it: timm's own loader, with a changed class count, loads non-strictly and would leave a missing
tensor at its random init without a word.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from typing import TYPE_CHECKING

from xtune.errors import XtuneConfigError
from xtune.models import weights as W

if TYPE_CHECKING:
    from torch import nn


def classifier_names(model: nn.Module) -> list[str]:
    """Names of the classifier module(s) of a timm model (from its pretrained config)."""
    names = model.pretrained_cfg.get("classifier") or ()
    return [names] if isinstance(names, str) else list(names)


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


@dataclass
class FittedWeights:
    """Local weights in the model's own names, checked to fit it, and what travels with them."""

    state: dict
    head_rows: int  # rows of the file's classifier (0: the file has none)
    layout: str
    preprocessing: dict


def _probe(name: str, kwargs: dict):
    """The model on the meta device: names, shapes and structure without memory or init cost."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - a model whose init cannot run on meta
        return timm.create_model(name, pretrained=False, **kwargs)


def fit_local_weights(name: str, weights: str, kwargs: dict) -> FittedWeights:
    """Read a local file or folder, rename a foreign layout into timm's names (models/convert.py),
    apply timm's own checkpoint filter, and check that every tensor of `name` is placed with its
    shape and none is left over (the classifier may differ: it is re-initialised for the run),
    and that the model is built as the weights need (BatchNorm eps, padding)."""
    from xtune.models.convert import to_timm

    path = W.local_path(weights)
    label = f"model.weights={path}"
    local = W.read_weights(path)
    probe = _probe(name, kwargs)
    converted = to_timm(local.state, probe, label)
    heads = classifier_names(probe)
    if converted.layout != "timm":  # our renaming maps to the same variant: only the input size may differ
        check_fits(converted.state, probe, heads, label, name, converted.layout, resizable=("pos_embed",))
    try:
        state = apply_timm_filter(converted.state, probe)
    except Exception as error:  # noqa: BLE001 - a timm filter meeting tensors it does not expect
        check_fits(converted.state, probe, heads, label, name, converted.layout)  # names the keys
        reason = str(error).splitlines()[0] if str(error) else ""
        raise XtuneConfigError(f"{label} does not fit {name}: timm's checkpoint filter failed "
                               f"({type(error).__name__}: {reason})") from None
    head_rows = check_fits(state, probe, heads, label, name, converted.layout)
    check_built_for(probe, {**converted.model_args, **local.model_args}, label, name, converted.layout)
    return FittedWeights(
        state=state,
        head_rows=head_rows,
        layout=converted.layout,
        preprocessing={**converted.preprocessing, **local.preprocessing},
    )


def apply_timm_filter(state: dict, model: nn.Module) -> dict:
    """timm's own `checkpoint_filter_fn` of the model's module (other layouts, ViT position
    embeddings resampled to the model's size); the identity for modules that have none."""
    module = importlib.import_module(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn(state, model) if callable(fn) else state


def check_fits(state: dict, model: nn.Module, heads: list[str], label: str, name: str, layout: str,
               resizable: tuple = ()) -> int:
    """Every tensor of `model` but its classifier is in `state` with its shape (but `resizable`
    ones, which timm's filter resizes), and nothing is left over; otherwise one line naming the
    first keys. Returns the rows of the state's head."""
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()
              if not key.endswith("num_batches_tracked")}
    head = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    body = [key for key in shapes if key not in head]
    missing = [key for key in body if key not in state]
    wrong = [key for key in body if key in state and key not in resizable
             and tuple(state[key].shape) != shapes[key]]
    extra = [key for key in state if key not in shapes and not key.endswith("num_batches_tracked")]
    if missing or wrong or extra:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of its {len(body)} tensors are missing from the file "
                            f"(e.g. {_first(missing)})")
        if wrong:
            key = wrong[0]
            problems.append(f"{len(wrong)} have another shape (size mismatch for {key}: file "
                            f"{tuple(state[key].shape)}, model {shapes[key]})")
        if extra:
            problems.append(f"{len(extra)} tensors of the file have no place in it (e.g. {_first(extra)})")
        how = "" if layout == "timm" else f" ({layout} layout)"
        raise XtuneConfigError(
            f"{label}{how} does not fit {name}: {'; '.join(problems)}; pass weights of {name} (timm, "
            "efficientnet_pytorch, torchvision or xtune .ckpt layout) or pick the matching model.name"
        )
    weight = next((state[key] for key in sorted(head) if key.endswith("weight") and key in state), None)
    return int(weight.shape[0]) if weight is not None else 0


def _first(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def check_built_for(model: nn.Module, needed: dict, label: str, name: str, layout: str) -> None:
    """Refuse a model built otherwise than the weights need (`bn_eps`, `pad_type`), naming the
    overrides (or, for efficientnet_pytorch weights, timm's tf_ twin that is built that way).

    These arguments change what the model computes but no tensor shape, so check_fits cannot see
    them. They are not applied behind the run's back: given as overrides they are in the run's
    config, and eval, export and resume rebuild the same model."""
    import timm
    from torch import nn

    wrong = {}
    eps = {module.eps for module in model.modules() if isinstance(module, nn.BatchNorm2d)}
    if "bn_eps" in needed and eps and eps != {needed["bn_eps"]}:
        wrong["bn_eps"] = needed["bn_eps"]
    if needed.get("pad_type") == "same" and not any(type(m).__name__ == "Conv2dSame" for m in model.modules()):
        wrong["pad_type"] = "same"
    if not wrong:
        return
    what = {"bn_eps": f"BatchNorm eps {needed.get('bn_eps')}", "pad_type": "TensorFlow 'SAME' padding"}
    overrides = " ".join(f"+model.{key}={value}" for key, value in wrong.items())
    twin = f"tf_{name.split('.')[0]}"
    fix = (f"use model.name={twin} (the same tensors, built that way) or add {overrides}"
           if layout == "efficientnet_pytorch" and timm.is_model(twin) else f"add {overrides}")
    raise XtuneConfigError(
        f"{label} holds {layout} weights computed with {' and '.join(what[key] for key in wrong)}; "
        f"{name} is built otherwise: {fix} (in the run's config, so eval and export rebuild it alike)"
    )


def create_backbone(
    name: str,
    num_classes: int | None,
    pretrained: bool = True,
    weights: str | None = None,
    image_size: int | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend: str | None = None,
    **kwargs,
):
    """`timm.create_model(name, num_classes=...)` with weights from, in this order of choice:

    - `weights`: a local .safetensors/.pth/.bin/.ckpt file or export folder, in timm's layout or
      one models/convert.py renames (efficientnet_pytorch, torchvision, an xtune checkpoint),
      loaded through timm's own pretrained path (its filters apply) once every tensor is known to
      fit; its classifier is kept when it has `num_classes` outputs (None: the file's own),
      otherwise re-initialised. The preprocessing that travels with the weights (export
      config.json, a checkpoint's run, the layout) becomes the model's pretrained config;
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
        fitted = fit_local_weights(name, weights, {**kwargs, "num_classes": num_classes or _default_classes(name)})
        preprocessing = dict(fitted.preprocessing)
        if _fixed_input_size(name):  # the size the model is built for (image_size) wins
            preprocessing.pop("input_size", None)
        overlay = dict(state_dict=fitted.state, num_classes=fitted.head_rows, **preprocessing)
        source = f"file:{W.local_path(weights)}"
        if fitted.layout != "timm":
            source += f" ({fitted.layout} layout)"
        if num_classes is None:
            num_classes = fitted.head_rows or _default_classes(name)
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
    if isinstance(model.pretrained_cfg, dict):
        model.pretrained_cfg.pop("state_dict", None)  # timm keeps the overlay: do not hold the tensors twice
    if compile:
        options = {"mode": compile_mode, "backend": compile_backend}
        model.compile(**{key: value for key, value in options.items() if value})
    return model


def _default_classes(name: str) -> int:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag: the architecture's default
        cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    return int(getattr(cfg, "num_classes", 0) or 1000)


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
