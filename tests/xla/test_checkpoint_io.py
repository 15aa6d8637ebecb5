"""The checkpoint writer a Trainer gets where torch_xla sees chips: XLA's own, never xtune's atomic one."""

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed here: the XLA tests run in their own "
                    "environment with the [tpu] extra and PJRT_DEVICE=CPU (see .ci/run)")

from helpers import compose


def test_trainer_auto_on_a_tpu_host_keeps_xlas_checkpoint_io(tmp_path, monkeypatch):
    """`trainer=auto` as it resolves on a TPU VM: Lightning picks its XLA accelerator and strategy,
    which assert on the first save that their checkpoint IO is XLACheckpointIO. xtune's atomic
    writer replaces only Lightning's plain TorchCheckpointIO, so the XLA one must survive. The
    chips are the one thing faked (Lightning asks torch_xla for TPU devices); the devices are
    XLA:CPU's (PJRT_DEVICE=CPU, tests/xla/conftest.py)."""
    from lightning_fabric.accelerators.xla import XLAAccelerator as FabricXLAAccelerator
    from lightning_fabric.plugins import TorchCheckpointIO, XLACheckpointIO
    from pytorch_lightning.accelerators import XLAAccelerator
    from pytorch_lightning.strategies import SingleDeviceXLAStrategy

    from xtune import hardware
    from xtune.hardware.checkpoint_io import AtomicCheckpointIO
    from xtune.tasks.common import build_trainer

    # what a TPU VM answers; on Fabric's class, which Lightning's `auto` asks and Lightning's own inherits
    monkeypatch.setattr(FabricXLAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(FabricXLAAccelerator, "auto_device_count", staticmethod(lambda: 1))
    cfg = compose("train", ["trainer=auto"], output_dir=tmp_path)
    assert hardware.prepare(cfg) == "tpu"
    trainer = build_trainer(cfg, [], [])
    assert isinstance(trainer.accelerator, XLAAccelerator)
    assert isinstance(trainer.strategy, SingleDeviceXLAStrategy)
    assert type(trainer.strategy.checkpoint_io) is XLACheckpointIO
    assert not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)

    # and the same call on the CPU profile does swap in the atomic writer (the rule, not a no-op)
    monkeypatch.setattr(FabricXLAAccelerator, "is_available", staticmethod(lambda: False))
    cpu = compose("train", ["trainer=auto"], output_dir=tmp_path / "cpu")
    assert hardware.prepare(cpu) == "cpu"
    writer = build_trainer(cpu, [], []).strategy.checkpoint_io
    assert isinstance(writer, AtomicCheckpointIO) and isinstance(writer, TorchCheckpointIO)
