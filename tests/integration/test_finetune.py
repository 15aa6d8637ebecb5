"""Fine-tuning strategies, regularisers, finders and export, on real (small) runs."""

import json

import pytest
import pytorch_lightning as pl
import timm
import torch
from safetensors.torch import save_file

from helpers import compose, run, run_cli, summary
from xtune.errors import XtuneInterrupted
from xtune.tasks.train import run_training

pytestmark = pytest.mark.slow

TRANSFER = ["experiment=finetune_transfer", "logger=csv", "~callbacks.rich_progress_bar", "~callbacks.model_summary"]


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory):
    """A test_resnet state dict saved as a timm weights file (ImageNet-style 1000-way head)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "init.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=1000).state_dict(), str(path))
    return path


def train(tmp_path, *overrides, callbacks=(), name="run"):
    cfg = compose("train", [*TRANSFER, *overrides], output_dir=tmp_path / name)
    return run_training(cfg, extra_callbacks=list(callbacks)), cfg


class Snapshots(pl.Callback):
    """The backbone's state (parameters and buffers) at fit start and after every epoch."""

    def __init__(self):
        self.states = []

    def _take(self, pl_module):
        model = getattr(pl_module.backbone, "get_base_model", lambda: pl_module.backbone)()
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    def on_train_start(self, trainer, pl_module):
        self._take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._take(pl_module)


def changed(before, after, prefix_filter):
    return {k for k in before if prefix_filter(k) and not torch.equal(before[k], after[k])}


def test_linear_probe_freezes_the_backbone_and_its_batchnorm(tmp_path, init_weights):
    snaps = Snapshots()
    result, _ = train(tmp_path, "finetune=linear_probe", f"model.weights={init_weights}", "trainer.max_epochs=1",
                      callbacks=[snaps])
    before, after = snaps.states
    body = changed(before, after, lambda k: not k.startswith("fc."))
    assert body == set(), f"frozen tensors changed: {sorted(body)[:5]}"
    assert any(k.endswith("running_mean") for k in before)  # BN statistics were part of the check
    assert changed(before, after, lambda k: k.startswith("fc.")) == {"fc.weight", "fc.bias"}
    assert result["finetune"]["trainable"] == 96 * 5 + 5


class StopAfter(pl.Callback):
    """A preemption at the end of `epoch`: the flag a SIGTERM sets (trainer.should_stop would be
    early stopping's decision, which a resumed run keeps)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer._signal_connector.received_sigterm = True


def test_backbone_unfreezes_exactly_at_its_epoch_and_resume_across_it_matches(tmp_path, init_weights):
    common = ["finetune=freeze_unfreeze", "finetune.unfreeze_at_epoch=2", f"model.weights={init_weights}",
              "trainer.max_epochs=4", "data.train_fraction=0.5"]
    snaps = Snapshots()
    train(tmp_path, *common, callbacks=[snaps], name="full")
    states = snaps.states  # start, after epoch 0, 1, 2, 3
    body = lambda k: not k.startswith("fc.") and "running" not in k and "num_batches" not in k  # noqa: E731
    assert changed(states[0], states[1], body) == set()
    assert changed(states[1], states[2], body) == set()
    moved = changed(states[2], states[3], body)
    assert len(moved) > 10, "the backbone must train from the unfreeze epoch on"

    for stop in (0, 2):  # interrupted before, and after, the unfreeze
        name = f"stopped_{stop}"
        with pytest.raises(XtuneInterrupted):
            train(tmp_path, *common, callbacks=[StopAfter(stop)], name=name)
        resumed = Snapshots()
        train(tmp_path, *common, f"ckpt_path={tmp_path / name / 'checkpoints' / 'last.ckpt'}",
              callbacks=[resumed], name=f"resumed_{stop}")
        final = resumed.states[-1]
        different = [k for k in final if not torch.equal(final[k], states[-1][k])]
        assert different == [], f"resume after epoch {stop} diverged: {different[:5]}"


def test_layer_decay_scales_equal_timms(tmp_path):
    from timm.optim import create_optimizer_v2

    from xtune.models.finetune import LayerDecay
    from xtune.models.module import ClassificationModule

    for name in ("test_resnet", "test_vit", "test_convnext"):
        model = timm.create_model(name, num_classes=5)
        strategy = LayerDecay(decay=0.7)
        import functools

        module = ClassificationModule(strategy.prepare(model), 5,
                                      functools.partial(create_optimizer_v2, opt="adamw", lr=1e-3, weight_decay=0.05),
                                      optimizer_kwargs=strategy.optimizer_kwargs(model, 0.05))
        ours = module.configure_optimizers()
        reference = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.7)
        scale = lambda opt: {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}  # noqa: E731
        ref = scale(reference)
        assert len(ref) == sum(1 for _ in model.parameters())
        assert scale(ours) == ref
        # no scheduler here: the module applied lr_scale to each group's LR itself
        assert [g["lr"] for g in ours.param_groups] == pytest.approx([1e-3 * g["lr_scale"] for g in ours.param_groups])
        assert min(ref.values()) < 0.2 and max(ref.values()) == 1.0


def test_lora_trains_only_adapters_and_exports_merged(tmp_path, init_weights):
    pytest.importorskip("peft", reason="the [lora] extra is not installed")
    snaps = Snapshots()
    result, _ = train(tmp_path, "finetune=lora", f"model.weights={init_weights}", "trainer.max_epochs=1",
                      "export=true", "optim.lr=1e-2", callbacks=[snaps])
    before, after = snaps.states
    moved = changed(before, after, lambda k: "running" not in k and "num_batches" not in k)
    assert moved and all("lora_" in k or "modules_to_save" in k or k.startswith("fc.") for k in moved), sorted(moved)[:8]
    assert result["finetune"]["trainable"] < result["finetune"]["total"] * 0.2

    # the merged export reproduces the adapted model, and model.weights loads it back
    run_dir = tmp_path / "run"
    from omegaconf import OmegaConf

    from xtune.checkpoint import module_from_checkpoint, read_checkpoint
    from xtune.models import create_backbone

    checkpoint = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    module, _ = module_from_checkpoint(checkpoint, OmegaConf.create(checkpoint["xtune"]["config"]))
    module.eval()
    reloaded = create_backbone("test_resnet", num_classes=5, weights=str(run_dir / "export")).eval()
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(module(images), reloaded(images), atol=1e-5)
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["label_names"] == ["5", "6", "7", "8", "9"] and config["num_classes"] == 5
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    from safetensors.torch import load_file

    exported = load_file(run_dir / "export" / "model.safetensors")
    assert not any("lora" in k or "base_model" in k for k in exported)  # merged: plain timm keys


def test_export_reloads_with_identical_predictions_via_cli(tmp_path, init_weights):
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *TRANSFER, f"model.weights={init_weights}", "trainer.max_epochs=1",
                     "export=true", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    assert s["export"] == str(run_dir / "export" / "model.safetensors")
    # timm loads the export by itself, and so does model.weights
    plain = timm.create_model(f"local-dir:{run_dir / 'export'}", pretrained=True).eval()
    from xtune.models import create_backbone

    ours = create_backbone("test_resnet", num_classes=5, weights=str(run_dir / "export")).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(images), ours(images))
    # a standalone export of the same checkpoint writes the same weights
    out = tmp_path / "again"
    result = run(["xtune-export", f"ckpt_path={s['best']['checkpoint']}", f"export_dir={out}",
                  f"hydra.run.dir={tmp_path / 'export_run'}"], tmp_path=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from safetensors.torch import load_file

    first, second = load_file(run_dir / "export" / "model.safetensors"), load_file(out / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_ema_weights_are_what_gets_evaluated(tmp_path):
    """The quickstart with a slow average (decay 0.999 over 146 steps stays near the random init)
    while the live weights learn the digits: the run's own test of best.ckpt and eval.py on it
    must both score the average, which the checkpoint holds as its state_dict."""
    run_dir = tmp_path / "run"
    result = run_cli("train.py", "experiment=quickstart", "logger=csv", "callbacks=[default,ema]",
                     "callbacks.ema.decay=0.999", "trainer.max_epochs=2", "data.batch_size=16",
                     f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    live, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
    assert any(not torch.equal(live[k], averaged[k]) for k in averaged if k.startswith("backbone."))
    scores = {}
    for name, state in (("averaged", averaged), ("live", live)):
        path = tmp_path / f"{name}.ckpt"
        torch.save({**checkpoint, "state_dict": state}, path)
        result = run_cli("eval.py", f"ckpt_path={path}", "logger=none", f"hydra.run.dir={tmp_path / name}",
                         tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = summary(tmp_path / name)["metrics"]["test/acc"]
    assert scores["live"] > scores["averaged"] + 0.3  # the two differ: the check below has teeth
    assert summary(run_dir)["metrics"]["test/acc"] == pytest.approx(scores["averaged"], abs=1e-6)


def test_mixup_cutmix_make_soft_targets_and_train(tmp_path, init_weights):
    cfg = compose("train", ["mixup=mixup_cutmix", "label_smoothing=0.1"], output_dir=tmp_path)
    from hydra.utils import instantiate

    mixup = instantiate(cfg.mixup)(num_classes=5, label_smoothing=0.1)
    images, targets = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixed, soft = mixup(images.clone(), targets)
    assert soft.shape == (8, 5)
    assert torch.allclose(soft.sum(1), torch.ones(8))
    assert (soft.max(1).values < 1.0).all()  # no one-hot row survives mixing and smoothing
    result, _ = train(tmp_path, "mixup=mixup_cutmix", f"model.weights={init_weights}", "trainer.max_epochs=2",
                      "data.batch_size=15")  # odd batches: the module drops one image to mix pairs
    assert result["status"] == "completed" and result["metrics"]["train/loss"] > 0


def test_lr_and_batch_size_finders(tmp_path, init_weights):
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *TRANSFER, "tune=all", "tune.lr_find.num_training=30",
                     "tune.lr_find.early_stop_threshold=null",
                     "tune.scale_batch_size.max_trials=3", "tune.scale_batch_size.init_val=4",
                     # the LR finder's 30 steps must fit in max_epochs (5 batches of 32 per epoch)
                     f"model.weights={init_weights}", "trainer.max_epochs=7", f"hydra.run.dir={run_dir}",
                     tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tuned = summary(run_dir)["tuned"]
    assert tuned["batch_size"] == 4 * 2 ** (3 - 1)  # a CPU never runs out of memory: 3 trials, 4 -> 8 -> 16
    assert 1e-6 <= tuned["lr"] <= 1.0
    assert (run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


#: learning rate per strategy (the best on validation in experiments/finetune_strategies) and the
#: test accuracy each must reach on digits 5-9 from a digits-0-4 backbone with 25 % of the labels
TRANSFER_BARS = {
    "linear_probe": (3e-2, 0.65),
    "lora": (3e-2, 0.85),
    "freeze_unfreeze": (1e-2, 0.75),
    "layer_decay": (1e-2, 0.93),
    "full": (1e-2, 0.90),
}


@pytest.fixture(scope="module")
def pretrained_0_to_4(tmp_path_factory):
    logs = tmp_path_factory.mktemp("study_logs")
    cfg = compose("train", ["experiment=finetune_pretrain", "logger=csv", "~callbacks.rich_progress_bar",
                            "~callbacks.model_summary", f"paths.log_dir={logs}"], output_dir=logs / "pretrain")
    result = run_training(cfg)
    assert result["metrics"]["test/acc"] >= 0.97  # digits 0-4 from scratch
    return logs


@pytest.mark.parametrize("strategy", list(TRANSFER_BARS))
def test_every_strategy_reaches_its_bar_on_the_transfer_task(tmp_path, pretrained_0_to_4, strategy):
    lr, bar = TRANSFER_BARS[strategy]
    result, _ = train(tmp_path, f"finetune={strategy}", f"optim.lr={lr}", f"paths.log_dir={pretrained_0_to_4}")
    assert result["model"]["weights"].endswith("weights_test_resnet")
    assert result["metrics"]["test/acc"] >= bar, (strategy, result["metrics"]["test/acc"])
