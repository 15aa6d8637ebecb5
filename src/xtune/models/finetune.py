"""Fine-tuning strategies: which parameters train, at which learning rate, how the result exports.

A strategy (configs/finetune/*.yaml) acts at three points of the recipe:
- `prepare(model)`: after the backbone is built (freeze parameters, wrap LoRA adapters);
- `optimizer_kwargs(model, weight_decay)`: extra keyword arguments for timm's
  create_optimizer_v2 (param groups with `lr_scale`, layer decay);
- `callbacks()`: Lightning callbacks it needs (unfreezing, frozen norms kept in eval mode);
and `export(model)` returns the plain timm model to save (LoRA merged).

Learning-rate ratios are expressed as timm's `lr_scale` on param groups, which timm's
schedulers apply (and the module applies itself when there is no scheduler).
"""

from __future__ import annotations

import copy
import functools

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xtune.errors import XtuneConfigError
from xtune.models.backbone import classifier_names


def is_head(name: str, heads: list[str]) -> bool:
    name = name.split("base_model.model.", 1)[-1]  # inside a peft wrapper
    return any(name == h or name.startswith(h + ".") for h in heads)


def decay_groups(model: nn.Module, weight_decay: float, params=None, **extra) -> list[dict]:
    """timm's param_groups_weight_decay (no decay on norms, biases and the model's own
    no_weight_decay list; frozen parameters left out), limited to `params` (None: all), with
    `extra` keys (lr_scale, ...) on every group."""
    from timm.optim import param_groups_weight_decay

    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    wanted = None if params is None else {id(p) for p in params}
    groups = []
    for group in param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay):
        kept = [p for p in group["params"] if wanted is None or id(p) in wanted]
        if kept:
            groups.append({**group, "params": kept, **extra})
    return groups


def head_and_backbone_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float) -> list[dict]:
    heads = classifier_names(model)
    named = list(model.named_parameters())
    head = [p for n, p in named if is_head(n, heads)]
    body = [p for n, p in named if not is_head(n, heads)]
    return (decay_groups(model, weight_decay, body, lr_scale=backbone_lr_scale)
            + decay_groups(model, weight_decay, head, lr_scale=1.0))


class Strategy:
    """Full fine-tuning: every parameter trains at the optimizer's learning rate."""

    name = "full"

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def optimizer_kwargs(self, model: nn.Module, weight_decay: float) -> dict:
        return {}

    def callbacks(self) -> list:
        return []

    def export(self, model: nn.Module) -> nn.Module:
        return model


class Full(Strategy):
    """Every parameter trains; `backbone_lr_scale` sets the backbone's LR relative to the head's
    (e.g. 0.1: a new head learns fast while pretrained features move slowly)."""

    def __init__(self, backbone_lr_scale: float = 1.0):
        if not backbone_lr_scale > 0:
            raise XtuneConfigError(f"finetune.backbone_lr_scale={backbone_lr_scale}: expected a number > 0")
        self.backbone_lr_scale = float(backbone_lr_scale)

    def optimizer_kwargs(self, model, weight_decay):
        if self.backbone_lr_scale == 1.0:
            return {}
        # the param groups decide weight decay themselves (none on norms and biases): timm's
        # create_optimizer_v2 ignores filter_bias_and_bn when given param_group_fn
        return {"param_group_fn": functools.partial(
            head_and_backbone_groups, weight_decay=weight_decay, backbone_lr_scale=self.backbone_lr_scale)}


def freeze_backbone(model: nn.Module) -> None:
    heads = classifier_names(model)
    for name, param in model.named_parameters():
        param.requires_grad = is_head(name, heads)


class FrozenNormsInEval(pl.Callback):
    """BatchNorm layers train exactly when their parameters do: frozen ones stay in eval mode
    (running statistics unchanged), unfrozen ones (freeze_unfreeze, after the unfreeze) train.

    Checked at each training batch (a few microseconds): Lightning restores every module's mode
    after validation, and puts all of them in train mode when a fit starts - so without this a
    resumed run and an uninterrupted one would disagree on the mode of unfrozen layers."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for module in pl_module.modules():
            if isinstance(module, _BatchNorm):
                weight = module.weight
                trains = weight is not None and weight.requires_grad
                if module.training != trains:
                    module.train(trains)


class LinearProbe(Strategy):
    """Only the new classifier trains; the pretrained backbone is frozen, its BatchNorm layers
    stay in eval mode (running statistics unchanged)."""

    name = "linear_probe"

    def prepare(self, model):
        freeze_backbone(model)
        return model

    def callbacks(self):
        return [FrozenNormsInEval()]


class UnfreezeBackbone(BaseFinetuning):
    """Lightning's BackboneFinetuning semantics for a timm model whose head lives inside it:
    the head trains alone until `unfreeze_at_epoch`, then the backbone joins with its own param
    groups at `backbone_lr_scale` x the head's LR, following the same (timm) schedule.

    BaseFinetuning records the param groups in checkpoints and restores them on resume, so a run
    resumed before or after the unfreeze continues exactly as an uninterrupted one.
    """

    def __init__(self, unfreeze_at_epoch: int, backbone_lr_scale: float, weight_decay: float):
        super().__init__()
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.weight_decay = float(weight_decay)

    def freeze_before_training(self, pl_module):
        freeze_backbone(pl_module.backbone)

    def finetune_function(self, pl_module, epoch, optimizer):
        if epoch < self.unfreeze_at_epoch:
            return
        model = pl_module.backbone
        heads = classifier_names(model)
        body = [(n, p) for n, p in model.named_parameters() if not is_head(n, heads)]
        for _, param in body:
            param.requires_grad = True
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [(n, p) for n, p in body if id(p) not in in_optimizer]
        if not new:  # resumed after the unfreeze: BaseFinetuning restored the groups already
            return
        base_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
        groups = decay_groups(model, self.weight_decay, [p for _, p in new], lr_scale=self.backbone_lr_scale,
                              initial_lr=base_lr, lr=base_lr * self.backbone_lr_scale)
        for group in groups:
            optimizer.add_param_group(group)
        trainer = pl_module.trainer
        for config in trainer.lr_scheduler_configs:  # timm schedulers keep one base LR per group
            scheduler = config.scheduler
            if hasattr(scheduler, "base_values"):
                scheduler.base_values.extend([base_lr] * len(groups))
                scheduler.step_update(num_updates=trainer.global_step)


class FreezeUnfreeze(Strategy):
    """The head trains first; the backbone unfreezes at `unfreeze_at_epoch` with its own LR."""

    name = "freeze_unfreeze"

    def __init__(self, unfreeze_at_epoch: int = 2, backbone_lr_scale: float = 0.1, weight_decay: float = 0.0):
        if int(unfreeze_at_epoch) < 1:
            raise XtuneConfigError(
                f"finetune.unfreeze_at_epoch={unfreeze_at_epoch}: expected >= 1 (0 is finetune=full)")
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.weight_decay = float(weight_decay)

    def callbacks(self):
        return [UnfreezeBackbone(self.unfreeze_at_epoch, self.backbone_lr_scale, self.weight_decay),
                FrozenNormsInEval()]


class LayerDecay(Strategy):
    """Layer-wise LR decay with timm's own param groups: the head at the optimizer's LR, each
    layer group below it at `decay` x the one above (BEiT, MAE, ConvNeXt fine-tuning)."""

    name = "layer_decay"

    def __init__(self, decay: float = 0.75, min_scale: float = 0.0):
        if not 0 < decay <= 1:
            raise XtuneConfigError(f"finetune.decay={decay}: expected a number in (0, 1]")
        self.decay, self.min_scale = float(decay), float(min_scale)

    def prepare(self, model):
        if not hasattr(model, "group_matcher"):
            raise XtuneConfigError(
                f"finetune=layer_decay needs a timm model with layer groups; {type(model).__name__} has "
                "none: use finetune=full (optionally with finetune.backbone_lr_scale)")
        return model

    def optimizer_kwargs(self, model, weight_decay):
        return {"layer_decay": self.decay, "layer_decay_min_scale": self.min_scale}


#: LoRA targets per model family (peft regexes, full match). Attention and MLP projections of
#: transformers; 3x3 and 1x1 convolutions of CNN blocks.
LORA_TARGETS = {
    "VisionTransformer": r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
    "Eva": r".*blocks\.\d+\.(attn\.(qkv|q_proj|k_proj|v_proj|proj)|mlp\.(fc1|fc2|fc1_g|fc1_x))",
    "ConvNeXt": r".*stages\.\d+\.blocks\.\d+\.mlp\.(fc1|fc2)",
    "ResNet": r".*layer\d+\.\d+\.conv\d",
    "EfficientNet": r".*blocks\.\d+\.\d+\.(conv_pw|conv_pwl)",
    "MobileNetV3": r".*blocks\.\d+\.\d+\.(conv_pw|conv_pwl)",
}


def default_lora_targets(model: nn.Module):
    family = type(model).__name__
    if family in LORA_TARGETS:
        return LORA_TARGETS[family]
    heads = classifier_names(model)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not is_head(n, heads)]
    if not linear:
        raise XtuneConfigError(
            f"finetune=lora has no default targets for {family}: set finetune.target_modules "
            "(a regex or a list of module names)")
    return linear


class Lora(Strategy):
    """LoRA adapters (peft) on the backbone's linear or convolutional layers; only adapters and
    the new head train. The export merges the adapters into a plain timm model."""

    name = "lora"

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules=None,
                 bias: str = "none"):
        if int(r) < 1:
            raise XtuneConfigError(f"finetune.r={r}: expected an integer >= 1")
        self.r, self.alpha, self.dropout, self.bias = int(r), alpha, float(dropout), bias
        self.target_modules = target_modules

    def prepare(self, model):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise XtuneConfigError("finetune=lora needs peft: pip install -e \".[lora]\" (or pip install 'xtune[lora]')") from None

        targets = self.target_modules or default_lora_targets(model)
        if not isinstance(targets, str):
            targets = list(targets)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias=self.bias,
                            target_modules=targets, modules_to_save=classifier_names(model))
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as error:  # no module matched
            raise XtuneConfigError(f"finetune=lora: {' '.join(str(error).split())[:300]}") from None
        wrapped.weight_source = getattr(model, "weight_source", None)
        return wrapped

    def export(self, model):
        merged = copy.deepcopy(model).merge_and_unload()
        return merged


def trainable_summary(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_fraction": round(trainable / max(total, 1), 6)}

