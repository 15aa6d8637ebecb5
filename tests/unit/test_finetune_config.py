"""Fine-tuning strategies refuse nonsense in one line; their configs build what they say."""

import pytest
import timm
import torch

from helpers import compose
from xtune.errors import XtuneConfigError
from xtune.models import finetune as F
from xtune.config.instantiate import build


@pytest.mark.parametrize("option,cls", [("full", F.Full), ("linear_probe", F.LinearProbe),
                                        ("freeze_unfreeze", F.FreezeUnfreeze), ("layer_decay", F.LayerDecay),
                                        ("lora", F.Lora)])
def test_each_option_builds_its_strategy(tmp_path, option, cls):
    strategy = build(compose("train", [f"finetune={option}"], output_dir=tmp_path).finetune, "finetune")
    assert isinstance(strategy, cls) and strategy.name == option


@pytest.mark.parametrize("make,message", [
    (lambda: F.Full(backbone_lr_scale=0), "finetune.backbone_lr_scale=0"),
    (lambda: F.FreezeUnfreeze(unfreeze_at_epoch=0), "finetune.unfreeze_at_epoch=0: expected >= 1"),
    (lambda: F.LayerDecay(decay=1.5), "finetune.decay=1.5"),
    (lambda: F.Lora(r=0), "finetune.r=0"),
])
def test_nonsense_is_refused(make, message):
    with pytest.raises(XtuneConfigError, match=message):
        make()


def test_layer_decay_needs_layer_groups():
    class Plain(torch.nn.Module):
        pretrained_cfg = {"classifier": "fc"}

    with pytest.raises(XtuneConfigError, match="needs a timm model with layer groups"):
        F.LayerDecay().prepare(Plain())


def test_lora_targets_that_match_nothing_are_refused():
    pytest.importorskip("peft", reason="the [lora] extra is not installed")
    with pytest.raises(XtuneConfigError, match="finetune=lora"):
        F.Lora(target_modules=["no_such_layer"]).prepare(timm.create_model("test_resnet", num_classes=3))


@pytest.mark.parametrize("name,matched", [("test_vit", "blocks.0.attn.qkv"), ("test_resnet", "layer1.0.conv1"),
                                          ("test_convnext", "stages.0.blocks.0.mlp.fc1")])
def test_lora_default_targets_per_family(name, matched):
    pytest.importorskip("peft", reason="the [lora] extra is not installed")
    model = F.Lora().prepare(timm.create_model(name, num_classes=3))
    lora_modules = {n.split("base_model.model.", 1)[1] for n, _ in model.named_modules() if n.endswith(".lora_A")}
    assert any(m.startswith(matched) for m in lora_modules)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_backbone_lr_scale_groups():
    model = timm.create_model("test_resnet", num_classes=3)
    groups = F.head_and_backbone_groups(model, weight_decay=0.05, backbone_lr_scale=0.1)
    by_scale = {}
    for group in groups:
        by_scale.setdefault(group["lr_scale"], []).extend(group["params"])
    assert {id(p) for p in by_scale[1.0]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(by_scale[0.1]) == len(list(model.parameters())) - 2
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert all(p.ndim <= 1 for g in no_decay for p in g["params"])
