"""Hardware profiles: each composes and builds its Trainer here, or refuses in one clear line."""

import pytest
import timm
import torch
from omegaconf import OmegaConf

from helpers import compose
from xtune import hardware
from xtune.errors import XtuneConfigError
from xtune.hardware.profile import resolve_precision
from xtune.tasks.common import build_trainer

HAS_XLA = hardware.profile.xla_available()
HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("profile,strategy,devices,precision", [
    ("default", "SingleDeviceStrategy", 1, "32-true"),
    ("cpu", "SingleDeviceStrategy", 1, "32-true"),
    ("auto", "SingleDeviceStrategy", 1, "32-true"),
    ("ddp_sim", "DDPStrategy", 2, "32-true"),
])
def test_cpu_profiles_build_their_trainer(tmp_path, profile, strategy, devices, precision):
    cfg = compose("train", [f"trainer={profile}"], output_dir=tmp_path)
    assert hardware.prepare(cfg) == "cpu"
    trainer = build_trainer(cfg, [], [])
    assert type(trainer.strategy).__name__ == strategy
    assert trainer.num_devices == devices
    assert str(trainer.precision) == precision


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU: test_gpu_profiles_resolve_on_a_gpu runs instead")
@pytest.mark.parametrize("profile", ["gpu", "ddp", "fsdp"])
def test_gpu_profiles_refuse_clearly_without_cuda(tmp_path, profile):
    cfg = compose("train", [f"trainer={profile}"], output_dir=tmp_path)
    assert cfg.trainer.precision == "auto" and cfg.hardware.channels_last == "auto"
    assert cfg.hardware.matmul_precision == "high" and cfg.data.pin_memory is True
    with pytest.raises(XtuneConfigError, match="no CUDA GPU is visible.*use trainer=cpu"):
        hardware.prepare(cfg)


@pytest.mark.skipif(HAS_XLA, reason="this environment has torch_xla")
@pytest.mark.parametrize("profile", ["tpu", "xla_cpu"])
def test_tpu_profiles_name_the_extra_to_install(tmp_path, profile):
    cfg = compose("train", [f"trainer={profile}"], output_dir=tmp_path)
    assert cfg.trainer.precision == "bf16-true" and cfg.data.drop_last is True
    assert cfg.hardware.xla_sync_eval is True and cfg.trainer.log_every_n_steps >= 50
    with pytest.raises(XtuneConfigError, match=r"needs torch_xla.*pip install -e \"\.\[tpu\]\"") as raised:
        hardware.prepare(cfg)
    if profile == "xla_cpu":  # XLA on this CPU is not a TPU VM: the message must not say it is
        assert "TPU VM" not in str(raised.value) and "PJRT_DEVICE=CPU" in str(raised.value)
    else:
        assert "on the TPU VM" in str(raised.value)


@pytest.mark.parametrize("kind,precision,message", [
    ("tpu", "bf16-mixed", "Lightning's XLA precision refuses it; use bf16-true"),
    ("tpu", "16-true", "silently runs fp32"),
    ("tpu", "16-mixed", "XLA has no fp16 autocast"),
    ("cpu", "16-mixed", "fp16 is not accelerated on CPUs"),
])
def test_precisions_a_device_cannot_run_are_refused(kind, precision, message):
    with pytest.raises(XtuneConfigError, match=f"trainer.precision={precision} is not supported on {kind}: .*{message}"):
        resolve_precision(kind, precision)


def test_auto_precision_per_device():
    assert resolve_precision("cpu", "auto") == "32-true"
    assert resolve_precision("tpu", "auto") == "bf16-true"
    assert resolve_precision("tpu", "bf16-true") == "bf16-true"


def test_cpu_profile_refuses_fp16_end_to_end(tmp_path):
    cfg = compose("train", ["trainer=cpu", "trainer.precision=16-mixed"], output_dir=tmp_path)
    with pytest.raises(XtuneConfigError, match="not supported on cpu"):
        hardware.prepare(cfg)


def test_channels_last_auto_means_convolutional_backbones_on_gpus():
    resnet = timm.create_model("test_resnet", num_classes=3)
    vit = timm.create_model("test_vit", num_classes=3)
    def profile(setting):
        return OmegaConf.create({"hardware": {"channels_last": setting}})

    assert hardware.wants_channels_last(profile("auto"), "cuda", resnet) is True
    assert hardware.wants_channels_last(profile("auto"), "cuda", vit) is False
    assert hardware.wants_channels_last(profile("auto"), "cpu", resnet) is False
    assert hardware.wants_channels_last(profile(True), "cpu", vit) is True
    assert hardware.wants_channels_last(profile(False), "cuda", resnet) is False


def test_channels_last_module_trains(tmp_path):
    from functools import partial

    from timm.optim import create_optimizer_v2

    from xtune.models.module import ClassificationModule

    module = ClassificationModule(timm.create_model("test_resnet", num_classes=3), 3,
                                  partial(create_optimizer_v2, opt="sgd", lr=0.1))
    module.use_channels_last()
    conv = next(m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    loss = module._step("train", (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])))
    loss.backward()
    assert torch.isfinite(loss)


def test_vit_is_built_at_the_data_image_size():
    from xtune.models import create_backbone

    model = create_backbone("test_vit", num_classes=3, pretrained=False, image_size=64)
    assert tuple(model.patch_embed.img_size) == (64, 64)
    resnet = create_backbone("test_resnet", num_classes=3, pretrained=False, image_size=64)
    assert resnet.fc.out_features == 3  # no img_size for models without a fixed input size


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the refusal is tested where there is none)")
@pytest.mark.parametrize("profile", ["gpu", "ddp"])
def test_gpu_profiles_resolve_on_a_gpu(tmp_path, profile):
    cfg = compose("train", [f"trainer={profile}"], output_dir=tmp_path)
    assert hardware.prepare(cfg) == "cuda"
    assert cfg.trainer.precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
    assert torch.get_float32_matmul_precision() == "high"
    trainer = build_trainer(cfg, [], [])
    assert trainer.strategy.root_device.type == "cuda"


def test_checkpoint_io_is_decided_from_the_strategy_object(tmp_path):
    """Plain file writers become atomic; a strategy with its own writer (XLA's XLACheckpointIO,
    which Lightning's XLA strategies assert) keeps it, whatever the profile's strings say."""
    import pytorch_lightning as pl
    from lightning_fabric.plugins import TorchCheckpointIO

    from xtune.hardware.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints

    cfg = compose("train", ["trainer=auto"], output_dir=tmp_path)
    hardware.prepare(cfg)
    assert isinstance(build_trainer(cfg, [], []).strategy.checkpoint_io, AtomicCheckpointIO)

    class OwnWriter(TorchCheckpointIO):  # stands for XLACheckpointIO, which needs torch_xla to build
        pass

    trainer = pl.Trainer(accelerator="cpu", plugins=[OwnWriter()], logger=False, enable_progress_bar=False)
    use_atomic_checkpoints(trainer)
    assert type(trainer.strategy.checkpoint_io) is OwnWriter


# --- XLA profiles: which strategy runs, on how many devices (decided before torch_xla starts) ---------


def test_tpu_profile_runs_spmd_by_default_and_xla_spawn_by_name(tmp_path):
    """trainer=tpu: one SPMD process per host (Lightning sees one device standing for the mesh);
    trainer.strategy=xla_spawn keeps Lightning's one process per chip. Checked without torch_xla:
    the names resolve in Lightning's registry to the classes the Trainer will build."""
    from pytorch_lightning.strategies import StrategyRegistry, XLAStrategy

    from xtune.hardware import xla_profile
    from xtune.hardware.spmd import XLASPMDStrategy

    spmd = compose("train", ["trainer=tpu"], output_dir=tmp_path)
    assert spmd.trainer.strategy == "xla_spmd" and spmd.trainer.devices == "auto"
    xla_profile.configure(spmd)
    assert spmd.trainer.devices == 1
    for name, fsdp in (("xla_spmd", False), ("xla_spmd_fsdp", True)):
        entry = StrategyRegistry[name]
        assert entry["strategy"] is XLASPMDStrategy and entry["init_params"].get("fsdp", False) is fsdp
    spawn = compose("train", ["trainer=tpu", "trainer.strategy=xla_spawn"], output_dir=tmp_path)
    xla_profile.configure(spawn)
    assert spawn.trainer.devices == "auto"  # one process per chip, all chips
    assert StrategyRegistry["xla_spawn"]["strategy"] is XLAStrategy
    assert xla_profile.is_spmd({"_target_": "xtune.hardware.spmd.XLASPMDStrategy", "fsdp": True})
    assert not xla_profile.is_spmd("xla_spawn") and not xla_profile.is_spmd("auto")


@pytest.mark.parametrize("overrides,message", [
    (["trainer=tpu", "trainer.devices=4"],
     "trainer.strategy=xla_spmd drives every chip of the host from one process (SPMD): trainer.devices must be "
     "auto, not 4; for 4 chip(s) use trainer.strategy=xla_spawn trainer.devices=4"),
    (["trainer=xla_cpu", "hardware.xla_cpu_devices=0"], "hardware.xla_cpu_devices=0: expected a whole number >= 1"),
    (["trainer=xla_cpu", "hardware.xla_cpu_devices=two"], "hardware.xla_cpu_devices=two: expected a whole number"),
    (["trainer=xla_cpu", "hardware.xla_cpu_devices=2", "trainer.strategy=auto"],
     "hardware.xla_cpu_devices=2 with trainer.strategy=auto: several XLA:CPU devices run only under SPMD"),
    (["trainer=xla_cpu", "trainer.devices=4"],
     "trainer=xla_cpu trainer.devices=4: the number of XLA:CPU devices is hardware.xla_cpu_devices "
     "(e.g. hardware.xla_cpu_devices=4)"),
])
def test_xla_device_requests_that_cannot_run_are_refused_in_one_line(tmp_path, overrides, message):
    from xtune.hardware import xla_profile

    cfg = compose("train", overrides, output_dir=tmp_path)
    with pytest.raises(XtuneConfigError) as raised:
        xla_profile.configure(cfg)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_fused_optimizer_where_the_device_and_the_optimizer_have_one(tmp_path):
    from xtune.config.instantiate import build

    def kwargs(kind, *overrides):
        cfg = compose("train", list(overrides), output_dir=tmp_path)
        return hardware.optimizer_kwargs(cfg, kind, build(cfg.optim, "optim"))

    assert kwargs("cpu") == {"fused": True}  # the default: hardware.fused_optimizer=auto, AdamW
    assert kwargs("cuda", "optim=sgd") == {"fused": True}
    assert kwargs("tpu") == {} and kwargs("mps") == {}
    assert kwargs("cpu", "hardware.fused_optimizer=false") == {}
    assert kwargs("cpu", "+optim.foreach=true") == {}  # the user's own kernel choice wins
    assert kwargs("cpu", "optim.opt=lamb") == {}  # timm's Lamb has no fused step
    assert kwargs("cuda", "trainer.strategy=fsdp") == {}
    with pytest.raises(XtuneConfigError, match="hardware.fused_optimizer=true but tpu has no fused optimizer kernels"):
        kwargs("tpu", "hardware.fused_optimizer=true")
    with pytest.raises(XtuneConfigError, match="optimizer lamb has no fused step"):
        kwargs("cpu", "hardware.fused_optimizer=true", "optim.opt=lamb")
    with pytest.raises(XtuneConfigError, match="hardware.fused_optimizer=yes is not one of auto, true, false"):
        kwargs("cpu", "hardware.fused_optimizer=yes")


def test_a_resumed_run_steps_with_its_own_optimizer_kernel():
    """A checkpoint saved with fused steps (CPU, CUDA) loads where there are none (XLA)."""
    from functools import partial

    from timm.optim import create_optimizer_v2

    from xtune.models.module import ClassificationModule

    backbone = timm.create_model("test_resnet", num_classes=3)
    saved = create_optimizer_v2(backbone, opt="adamw", lr=0.1, fused=True).state_dict()
    assert saved["param_groups"][0]["fused"] is True
    module = ClassificationModule(backbone, 3, partial(create_optimizer_v2, opt="adamw", lr=0.1))
    checkpoint = {"optimizer_states": [saved]}
    module.on_load_checkpoint(checkpoint)
    assert {group["fused"] for group in checkpoint["optimizer_states"][0]["param_groups"]} == {None}
    optimizer = module.configure_optimizers()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    assert optimizer.param_groups[0]["fused"] is None
