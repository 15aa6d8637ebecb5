"""Weights in the layouts people have, renamed by rules into the timm model's own names.

timm loads its own layout and, through each model's `checkpoint_filter_fn`, a few foreign ones
(the original FB ConvNeXt, OpenAI CLIP / DINOv2 ViTs; the filter also resamples ViT position
embeddings). It has no rules for the `efficientnet_pytorch` layout (lukemelas' EfficientNet-PyTorch
and its Lite fork, whose tensors go by block number) nor for torchvision's models. Here each of
those layouts is recognised from its keys and renamed by rules that take the block structure from
the timm model itself; timm's filter then runs, and every tensor of the model is checked to be
placed with its shape before timm loads them (models/backbone.py).

A layout may also say what its weights were trained with beyond the tensors: preprocessing
(mean/std), which travels into the run, and constructor arguments that change what the model
computes without changing a tensor's shape (BatchNorm eps, TensorFlow 'SAME' padding). Those are
not applied behind the run's back: a model built otherwise is refused with the overrides to add,
so they live in the run's config and eval, export and resume rebuild the same model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from xtune.errors import XtuneConfigError

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
INCEPTION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

#: layout -> (the timm model class it fits, a timm name to suggest)
FAMILIES = {
    "efficientnet_pytorch": ("EfficientNet", "tf_efficientnet_b0 or tf_efficientnet_lite0"),
    "torchvision EfficientNet": ("EfficientNet", "efficientnet_b0"),
    "torchvision MobileNetV3": ("MobileNetV3", "mobilenetv3_large_100"),
    "torchvision ConvNeXt": ("ConvNeXt", "convnext_tiny"),
    "torchvision ViT": ("VisionTransformer", "vit_base_patch16_224"),
}

#: torchvision ViT -> timm VisionTransformer (same blocks; torch's MultiheadAttention packs q, k, v
#: in one in_proj like timm's qkv)
VIT_RULES = [
    (r"class_token", r"cls_token"),
    (r"conv_proj\.(.*)", r"patch_embed.proj.\1"),
    (r"encoder\.pos_embedding", r"pos_embed"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_1\.(.*)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.(.*)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_2\.(.*)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.0\.(.*)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.3\.(.*)", r"blocks.\1.mlp.fc2.\2"),
    (r"encoder\.ln\.(.*)", r"norm.\1"),
    (r"heads\.head\.(.*)", r"head.\1"),
]


@dataclass
class Converted:
    """A state dict in timm's names, and what else its layout says about the weights."""

    state: dict
    layout: str = "timm"
    model_args: dict = field(default_factory=dict)  # constructor arguments the weights need
    preprocessing: dict = field(default_factory=dict)


def detect_layout(state: dict) -> str:
    """The layout of a state dict, from its keys alone ("timm" when none of ours matches)."""
    if "_conv_stem.weight" in state:
        return "efficientnet_pytorch"
    if "conv_proj.weight" in state and "encoder.pos_embedding" in state:
        return "torchvision ViT"
    for key in state:
        if re.fullmatch(r"features\.\d+\.\d+\.layer_scale", key):
            return "torchvision ConvNeXt"
        if re.fullmatch(r"features\.\d+\.\d+\.block\.\d+\.\d+\.weight", key):
            return "torchvision EfficientNet"
        if re.fullmatch(r"features\.\d+\.block\.\d+\.\d+\.weight", key):
            return "torchvision MobileNetV3"
    return "timm"  # timm's own, or one of the layouts timm's checkpoint filters convert


def to_timm(state: dict, model: nn.Module, label: str) -> Converted:
    """Rename a foreign state dict into `model`'s names (a probe: only names and shapes are read).

    `label` names the weights in error messages (e.g. "model.weights=/path").
    """
    layout = detect_layout(state)
    if layout == "timm":
        return Converted(state)
    family, example = FAMILIES[layout]
    if type(model).__name__ != family:
        raise XtuneConfigError(
            f"{label} holds {layout} weights (for a timm {family}, e.g. {example}); this model is a timm "
            f"{type(model).__name__}: pick a matching model.name"
        )
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if layout == "torchvision ViT":
        renamed = _by_patterns(state, VIT_RULES)
        return Converted(_fit_singletons(renamed, shapes), layout, preprocessing=dict(IMAGENET))
    if layout == "torchvision ConvNeXt":
        return Converted(_fit_singletons(_convnext(state), shapes), layout, preprocessing=dict(IMAGENET))
    if layout == "efficientnet_pytorch":
        renamed = _rename_modules(state, _efficientnet_pytorch_modules(state, model, label))
        lite = not any("._se_reduce." in key for key in state)  # Lite models have no squeeze-excite
        # lukemelas' code pads like TensorFlow ('SAME') and uses TF's BatchNorm epsilon; the Lite
        # models were trained on inputs scaled to [-1, 1] (TF's lite builder: mean 127, std 128)
        return Converted(renamed, layout, model_args={"bn_eps": 1e-3, "pad_type": "same"},
                         preprocessing=dict(INCEPTION if lite else IMAGENET))
    modules, without_se = _torchvision_mobile_modules(state, model, label, layout)
    renamed = _fit_singletons(_rename_modules(state, modules), shapes)
    # torchvision's MobileNetV3 and EfficientNetV2 (the one with blocks lacking squeeze-excite)
    # use BatchNorm eps 1e-3; its EfficientNet B0-B7 timm's default 1e-5
    args = {"bn_eps": 1e-3} if layout == "torchvision MobileNetV3" or without_se else {}
    return Converted(renamed, layout, model_args=args, preprocessing=dict(IMAGENET))


def _by_patterns(state: dict, rules: list) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value
    return out


def _convnext(state: dict) -> dict:
    """torchvision ConvNeXt -> timm: features.0 is the stem, odd features.N are the stages,
    even ones (from 2) the downsampling layers before them; classifier.0/2 are the head."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and parts[1] == "0":
            key = ".".join(["stem", *parts[2:]])
        elif parts[0] == "features" and int(parts[1]) % 2 == 1:
            stage, block = (int(parts[1]) - 1) // 2, parts[2]
            rest = ".".join(parts[3:])
            rest = {"layer_scale": "gamma"}.get(rest, rest)
            rest = re.sub(r"^block\.(\d+)\.", lambda m: {"0": "conv_dw.", "2": "norm.", "3": "mlp.fc1.",
                                                          "5": "mlp.fc2."}.get(m.group(1), m.group(0)), rest)
            key = f"stages.{stage}.blocks.{block}.{rest}"
        elif parts[0] == "features":
            key = ".".join(["stages", str(int(parts[1]) // 2), "downsample", *parts[2:]])
        elif parts[0] == "classifier" and parts[1] in ("0", "2"):
            key = ".".join(["head", {"0": "norm", "2": "fc"}[parts[1]], *parts[2:]])
        out[key] = value
    return out


def _fit_singletons(state: dict, shapes: dict) -> dict:
    """Reshape tensors that differ from the model's only by size-1 dimensions (torchvision's
    layer scale (C, 1, 1) vs timm's (C,); a Linear layer that timm holds as a 1x1 conv)."""
    out = {}
    for key, value in state.items():
        target = shapes.get(key)
        if target and tuple(value.shape) != target and _squeezed(value.shape) == _squeezed(target):
            value = value.reshape(target)
        out[key] = value
    return out


def _squeezed(shape) -> tuple:
    return tuple(size for size in shape if size != 1)


def _rename_modules(state: dict, modules: dict) -> dict:
    """Rename each key by its module path (everything before the last dot)."""
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        out[f"{modules[module]}.{param}" if module in modules else key] = value
    return out


def _timm_units(block: nn.Module) -> list[tuple]:
    """The layers of a timm EfficientNet/MobileNet block in forward order: ("conv", conv, norm)
    and ("se", reduce, expand). timm registers them in the order it runs them."""
    units = []
    for name, child in block.named_children():
        if isinstance(child, nn.Conv2d):
            units.append(["conv", name])
        elif isinstance(child, nn.BatchNorm2d) and units and units[-1][0] == "conv" and len(units[-1]) == 2:
            units[-1].append(name)
        elif hasattr(child, "conv_reduce") and hasattr(child, "conv_expand"):
            units.append(["se", f"{name}.conv_reduce", f"{name}.conv_expand"])
    return [tuple(unit) for unit in units]


def _timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's blocks.S.I in order: stage S, block I (the stage structure is the model's own)."""
    return [(f"blocks.{s}.{i}", block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]


def _pair_blocks(foreign: list[tuple[str, list]], model, label: str, layout: str) -> dict:
    """Pair the foreign blocks with timm's in order, then their layers unit by unit."""
    blocks = _timm_blocks(model)
    if len(foreign) != len(blocks):
        raise XtuneConfigError(
            f"{label} holds {layout} weights with {len(foreign)} blocks; this model has {len(blocks)}: "
            "the weights are of another size (e.g. b1 vs b0, small vs large): pick the matching model.name"
        )
    modules = {}
    for (where, theirs), (prefix, block) in zip(foreign, blocks):
        ours = _timm_units(block)
        if [unit[0] for unit in theirs] != [unit[0] for unit in ours]:
            raise XtuneConfigError(
                f"{label}: {layout} block {where} ({', '.join(u[0] for u in theirs)}) does not match "
                f"{prefix} ({type(block).__name__}: {', '.join(u[0] for u in ours)}); the weights are "
                f"of another architecture variant: pick the matching model.name (e.g. {FAMILIES[layout][1]})"
            )
        for their_unit, our_unit in zip(theirs, ours):
            modules.update({theirs_name: f"{prefix}.{ours_name}"
                            for theirs_name, ours_name in zip(their_unit[1:], our_unit[1:])})
    return modules


def _efficientnet_pytorch_modules(state: dict, model, label: str) -> dict:
    """efficientnet_pytorch's flat `_blocks.N` -> timm's `blocks.S.I`; inside a block its layers
    in forward order (expand, depthwise, squeeze-excite, project) pair with timm's
    (DepthwiseSeparableConv: conv_dw/bn1, se, conv_pw/bn2; InvertedResidual: conv_pw/bn1,
    conv_dw/bn2, se, conv_pwl/bn3)."""
    numbers = sorted({int(key.split(".")[1]) for key in state if key.startswith("_blocks.")})
    layers = [("conv", "_expand_conv", "_bn0"), ("conv", "_depthwise_conv", "_bn1"),
              ("se", "_se_reduce", "_se_expand"), ("conv", "_project_conv", "_bn2")]
    foreign = []
    for n in numbers:
        units = [(kind, *(f"_blocks.{n}.{name}" for name in names)) for kind, *names in layers
                 if f"_blocks.{n}.{names[0]}.weight" in state]
        foreign.append((f"_blocks.{n}", units))
    modules = _pair_blocks(foreign, model, label, "efficientnet_pytorch")
    modules.update({"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                    "_fc": "classifier"})
    return modules


def _torchvision_mobile_modules(state: dict, model, label: str, layout: str) -> dict:
    """torchvision EfficientNet / MobileNetV3: `features.0` is the stem; `features.S.I.block` (or
    `features.N.block`) the blocks, whose `block.K` are conv+norm (K.0, K.1) or squeeze-excite
    (K.fc1, K.fc2); the last `features.L` a conv+norm: EfficientNet's head conv, MobileNetV3's
    last block. MobileNetV3's first classifier Linear is timm's conv_head (a 1x1 conv)."""
    blocks, plain = {}, []
    for key in state:
        match = re.match(r"(features\.\d+(?:\.\d+)?)\.block\.(\d+)\.(fc1|0)\.weight$", key)
        if match:
            blocks.setdefault(match.group(1), {})[int(match.group(2))] = match.group(3)
        elif re.match(r"features\.\d+\.0\.weight$", key):
            plain.append(key.rsplit(".", 2)[0])
    order = lambda path: tuple(int(x) for x in path.split(".")[1:])  # noqa: E731 - a sort key
    foreign = []
    for path in sorted(blocks, key=order):
        units = [("se", f"{path}.block.{k}.fc1", f"{path}.block.{k}.fc2") if kind == "fc1"
                 else ("conv", f"{path}.block.{k}.0", f"{path}.block.{k}.1")
                 for k, kind in sorted(blocks[path].items())]
        foreign.append((path, units))
    plain.sort(key=order)
    if len(plain) != 2:
        raise XtuneConfigError(f"{label}: unexpected {layout} layout (stem and head convolutions not found)")
    stem, last = plain
    modules = {f"{stem}.0": "conv_stem", f"{stem}.1": "bn1"}
    if layout == "torchvision MobileNetV3":
        foreign.append((last, [("conv", f"{last}.0", f"{last}.1")]))
        modules.update({"classifier.0": "conv_head", "classifier.3": "classifier"})
    else:
        modules.update({f"{last}.0": "conv_head", f"{last}.1": "bn2", "classifier.1": "classifier"})
    modules.update(_pair_blocks(foreign, model, label, layout))
    return modules, any("fc1" not in kinds.values() for kinds in blocks.values())
