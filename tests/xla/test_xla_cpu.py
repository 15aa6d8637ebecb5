"""Lightning's real XLA path on XLA:CPU: a fit, the readiness check, static shapes, fallbacks."""

import json

import pytest
import torch

pytest.importorskip("torch_xla", reason="torch_xla is not installed here: the XLA tests run in their own "
                    "environment with the [tpu] extra and PJRT_DEVICE=CPU (see .ci/run)")

from helpers import compose
from helpers import offline_env, run_cli, summary

XLA_ENV = {"PJRT_DEVICE": "CPU"}


def xla_cli(script, *overrides, tmp_path):
    return run_cli(script, *overrides, tmp_path=tmp_path, env=offline_env(tmp_path, **XLA_ENV))


def test_fit_through_lightning_xla(tmp_path):
    """XLA on CPU, not a TPU: a real fit with SingleDeviceXLAStrategy + XLAPrecision (bf16-true)."""
    run_dir = tmp_path / "run"
    result = xla_cli("train.py", "experiment=quickstart", "trainer=xla_cpu", "trainer.max_epochs=2",
                     "logger=csv", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    assert s["hardware"]["strategy"] == "SingleDeviceXLAStrategy"
    assert s["hardware"]["device_type"] == "xla"
    assert s["hardware"]["device_name"].startswith("XLA:CPU")
    assert s["precision"] == "bf16-true"
    assert all(torch.isfinite(torch.tensor(row["train/loss"])) for row in s["history"])
    assert s["metrics"]["test/acc"] > 0.3  # two epochs in bf16 learn something
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    tensor = next(iter(checkpoint["state_dict"].values()))
    assert tensor.device.type == "cpu"


def test_readiness_check_passes_a_static_config(tmp_path):
    """XLA on CPU, not a TPU: no compiles after warm-up, no CPU fallbacks but scalar reads."""
    run_dir = tmp_path / "check"
    result = run_cli_module("xla_check", "experiment=quickstart", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "xla_check.json").read_text())
    assert report["recompiles_after_warmup"] == 0
    assert report["step_compiles_per_epoch"][1:] == [0, 0, 0]
    assert report["boundary_compiles_per_epoch"][-1] == 0
    assert report["graphs_compiled"] > 0
    assert report["unexpected_fallback_ops"] == []
    assert set(report["fallback_ops"]) <= {"aten::_local_scalar_dense"}
    assert report["host_transfers_per_step"] < 0.5  # only the periodic finite-loss check
    assert "READY" in result.stdout and "not a TPU" in result.stdout


def run_cli_module(task, *overrides, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    return subprocess.run([sys.executable, "-c", f"from xtune.cli import {task}; {task}()", *overrides],
                          cwd=ROOT, env=offline_env(tmp_path, **XLA_ENV), capture_output=True, text=True,
                          timeout=900)


def _check(tmp_path, name, *overrides):
    run_dir = tmp_path / name
    result = run_cli_module("xla_check", "experiment=quickstart", "data.classes=[0,1]", "xla_check.epochs=4",
                            "xla_check.train_batches=10", "data.batch_size=64", *overrides,
                            f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "xla_check.json").read_text())


def test_a_ragged_last_batch_costs_exactly_one_compile(tmp_path):
    """XLA on CPU, not a TPU: 2 digit classes give 234 training images = 3 full batches + 42."""
    static = _check(tmp_path, "drop_last", "data.drop_last=true")
    ragged = _check(tmp_path, "ragged", "data.drop_last=false")
    assert ragged["graphs_compiled"] - static["graphs_compiled"] == 1
    assert ragged["step_compiles_per_epoch"][0] - static["step_compiles_per_epoch"][0] == 1
    assert ragged["recompiles_after_warmup"] == static["recompiles_after_warmup"] == 0


def test_a_config_that_recompiles_fails_the_check(tmp_path):
    """XLA on CPU, not a TPU: a forward whose input width changes every step must fail."""
    import pytorch_lightning as pl

    from xtune.tasks.xla_check import XlaNotReady, xla_check

    class GrowingCrop(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            forward = pl_module.backbone.forward

            def cropped(images):
                width = 40 + trainer.global_step if pl_module.training else images.shape[-1]
                return forward(images[..., :width])

            pl_module.backbone.forward = cropped

    cfg = compose("xla_check", ["experiment=quickstart", "data.image_size=64", "xla_check.epochs=3",
                                "xla_check.train_batches=3", "xla_check.val_batches=1"],
                  output_dir=tmp_path)
    with pytest.raises(XlaNotReady, match=r"not TPU-ready: \d+ XLA recompilations after warm-up"):
        xla_check(cfg, extra_callbacks=[GrowingCrop()])
    report = json.loads((tmp_path / "xla_check.json").read_text())
    assert report["recompiles_after_warmup"] > 0
