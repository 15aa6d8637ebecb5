"""xtune-xla-check on XLA:CPU: what trainer=tpu runs (SPMD, bf16-true), its counts, and its verdict."""

import json

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed here: the XLA tests run in their own "
                    "environment with the [tpu] extra and PJRT_DEVICE=CPU (see .ci/run)")

from helpers import compose
from helpers import offline_env

XLA_ENV = {"PJRT_DEVICE": "CPU"}


def run_cli_module(task, *overrides, tmp_path):
    from helpers import run

    return run([f"xtune-{task.replace('_', '-')}", *overrides], tmp_path=tmp_path,
               env=offline_env(tmp_path, **XLA_ENV), timeout=900)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """xtune-xla-check on 2 XLA:CPU devices (hardware.xla_cpu_devices=2), 2 digit classes: 234 training
    images = 3 full batches of 64 + 42, with drop_last (static) and without (ragged); both at once."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("xla_check")

    def check(name, *overrides):
        run_dir = tmp / name
        result = run_cli_module("xla_check", "experiment=quickstart", "data.classes=[0,1]", "xla_check.epochs=4",
                                "xla_check.train_batches=10", "data.batch_size=64", "hardware.xla_cpu_devices=2",
                                *overrides, f"hydra.run.dir={run_dir}", tmp_path=tmp)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads((run_dir / "xla_check.json").read_text()), result.stdout, run_dir

    with ThreadPoolExecutor(2) as pool:
        static = pool.submit(check, "drop_last", "data.drop_last=true")
        ragged = pool.submit(check, "ragged", "data.drop_last=false")
        return {"static": static.result(), "ragged": ragged.result()}


def test_readiness_check_passes_a_static_config_on_two_devices(checks):
    """XLA on CPU, not a TPU: no compiles after warm-up, no CPU fallbacks but scalar reads, and the
    collectives SPMD put into each training step, counted from XLA's compiled programs."""
    report, stdout, run_dir = checks["static"]
    assert report["strategy"] == "XLASPMDStrategy" and report["devices"] == 2
    assert report["recompiles_after_warmup"] == 0
    assert report["step_compiles_per_epoch"][1:] == [0, 0, 0]
    # the training steps that compiled: step 0 (creates the optimizer state) and step 1, nothing after
    assert report["boundary_compiles_per_epoch"][-1] == 0
    assert report["unexpected_fallback_ops"] == []
    assert set(report["fallback_ops"]) <= {"aten::_local_scalar_dense"}
    assert report["host_transfers_per_step"] < 0.5  # only the periodic finite-loss check
    # data parallel: gradients and BatchNorm statistics are summed across the 2 devices inside the step's
    # program, and no activation is gathered to the whole batch (XLA's own batch-norm-training would
    # gather them at the first BatchNorm: xtune.hardware.spmd_batchnorm)
    assert report["collectives_per_step"]["all-reduce"] > 0
    assert "all-gather" not in report["collectives_per_step"], report["collectives_per_step"]
    assert set(report["collectives_by_compiling_step"]) == {"0", "1"}
    assert not (run_dir / "xla_dump").exists()  # the dump is removed once counted
    assert "READY" in stdout and "not a TPU" in stdout
    assert "all-reduce" in stdout and "2 XLA:CPU device(s)" in stdout


def test_a_ragged_last_batch_costs_exactly_one_compile(checks):
    """XLA on CPU, not a TPU: the ragged batch of 42 (split 21 + 21) compiles one graph, once."""
    static, ragged = checks["static"][0], checks["ragged"][0]
    assert ragged["graphs_compiled"] - static["graphs_compiled"] == 1
    assert ragged["step_compiles_per_epoch"][0] - static["step_compiles_per_epoch"][0] == 1
    assert ragged["step_compiles_per_epoch"][1:] == [0, 0, 0]
    assert ragged["recompiles_after_warmup"] == static["recompiles_after_warmup"] == 0
    assert set(ragged["collectives_by_compiling_step"]) == {"0", "1", "3"}  # the ragged step is step 3


def test_a_config_that_recompiles_fails_the_check(tmp_path, monkeypatch):
    """XLA on CPU, not a TPU: a forward whose input width changes after warm-up must fail (in this
    process, on one device: the narrower crop in the last epoch compiles a new training graph)."""
    import pytorch_lightning as pl

    from xtune.tasks.xla_check import XlaNotReady, xla_check

    class NarrowerInTheLastEpoch(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            forward = pl_module.backbone.forward

            def cropped(images):
                narrower = pl_module.training and trainer.current_epoch == trainer.max_epochs - 1
                return forward(images[..., :-8] if narrower else images)

            pl_module.backbone.forward = cropped

    monkeypatch.setenv("CPU_NUM_DEVICES", "1")  # the profile sets it for this process; restored after
    cfg = compose("xla_check", ["experiment=quickstart", "xla_check.epochs=3", "xla_check.train_batches=3",
                                "xla_check.val_batches=1"], output_dir=tmp_path)
    with pytest.raises(XlaNotReady, match=r"not TPU-ready: \d+ XLA recompilations after warm-up"):
        xla_check(cfg, extra_callbacks=[NarrowerInTheLastEpoch()])
    report = json.loads((tmp_path / "xla_check.json").read_text())
    assert report["recompiles_after_warmup"] > 0
    assert report["step_compiles_per_epoch"][1] == 0 and report["step_compiles_per_epoch"][2] > 0
