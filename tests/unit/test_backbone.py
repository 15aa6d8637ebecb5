"""Backbones and their weights: local files, the Hub cache, offline failures, bad names."""

import time

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from xtune.errors import XtuneConfigError
from xtune.models import create_backbone
from xtune.models import weights as W


def fake_hub_cache(cache_dir, repo_id, state):
    """Lay out a Hugging Face cache entry the way huggingface_hub writes it."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def backbone_equal(model, state, skip=("fc.",)):
    own = model.state_dict()
    keys = [k for k in own if not k.startswith(skip)]
    return keys and all(torch.equal(own[k], state[k]) for k in keys)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_backbone_and_reinit_head(tmp_path, suffix):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    state = source.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = create_backbone("test_resnet", num_classes=3, weights=str(path))
    assert backbone_equal(model, state)
    assert model.fc.weight.shape[0] == 3  # head re-initialised for the new classes
    assert model.weight_source == f"file:{path.resolve()}"


def test_local_weights_with_a_fitting_head_keep_it(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    path = tmp_path / "finetuned.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_backbone("test_resnet", num_classes=5, weights=str(path))
    assert torch.equal(model.fc.weight, source.fc.weight)
    x = torch.randn(2, 3, 32, 32)
    source.eval(), model.eval()
    assert torch.allclose(model(x), source(x))


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(path))
    with pytest.raises(XtuneConfigError, match=r"does not fit test_resnet: \d+ of its \d+ tensors are missing"):
        create_backbone("test_resnet", num_classes=3, weights=str(path))


def test_weights_with_wrong_shapes_are_refused(tmp_path):
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    key = next(k for k in state if k.startswith("layer1") and k.endswith("conv1.weight"))
    state[key] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad_shapes.safetensors"
    save_file(state, str(path))
    with pytest.raises(XtuneConfigError, match="does not fit test_resnet: .*size mismatch"):
        create_backbone("test_resnet", num_classes=3, weights=str(path))


def test_corrupt_weights_file_is_refused(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(XtuneConfigError, match="cannot be read as weights"):
        create_backbone("test_resnet", num_classes=3, weights=str(path))


def test_unknown_model_suggests_close_names():
    with pytest.raises(XtuneConfigError, match=r"unknown timm model 'resnet5O' \(did you mean .*resnet50"):
        create_backbone("resnet5O", num_classes=3, pretrained=False)


def test_unknown_tag_lists_the_real_ones():
    with pytest.raises(XtuneConfigError, match="no pretrained tag 'test_resnet.nope'.*r160_in1k"):
        create_backbone("test_resnet.nope", num_classes=3)


def test_pretrained_from_the_hub_cache_needs_no_network(hub_cache):
    torch.manual_seed(1)
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    fake_hub_cache(hub_cache, "timm/test_resnet.r160_in1k", state)
    model = create_backbone("test_resnet", num_classes=4, pretrained=True)
    assert backbone_equal(model, state)
    assert model.weight_source == "hub:test_resnet.r160_in1k"


def test_pretrained_offline_and_not_cached_fails_fast(hub_cache):
    started = time.perf_counter()
    with pytest.raises(XtuneConfigError) as caught:
        create_backbone("test_resnet", num_classes=4, pretrained=True)
    message = caught.value.one_line()
    assert "pretrained weights test_resnet.r160_in1k (hf-hub:timm/test_resnet.r160_in1k)" in message
    assert "xtune-prefetch" in message and "model.pretrained=false" in message and "model.weights=" in message
    assert time.perf_counter() - started < 20  # huggingface_hub alone retries for ~46 s


def test_unreachable_hub_is_detected_quickly(hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    assert W.hub_reachable(timeout=2) is False
    with pytest.raises(XtuneConfigError, match="cannot be reached"):
        create_backbone("test_resnet", num_classes=4, pretrained=True)


def test_architecture_without_pretrained_weights():
    with pytest.raises(XtuneConfigError, match="no pretrained weights for 'no_such_arch'"):
        W.pretrained_cfg("no_such_arch")


def test_prefetch_returns_the_cached_file(hub_cache):
    from xtune.models.backbone import prefetch

    path = fake_hub_cache(hub_cache, "timm/test_resnet.r160_in1k", timm.create_model("test_resnet").state_dict())
    assert prefetch("test_resnet") == str(path)


def test_num_classes_none_keeps_the_files_head(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    path = tmp_path / "seven.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_backbone("test_resnet", num_classes=None, weights=str(path))
    assert model.num_classes == 7 and torch.equal(model.fc.weight, source.fc.weight)
    assert "state_dict" not in model.pretrained_cfg  # timm's overlay copy is dropped: tensors held once
