"""The Hydra task itself: what sweepers get back, and one W&B run per multirun job."""

import json

import pytest

from helpers import compose, offline_env, run

pytestmark = pytest.mark.slow


def test_train_returns_the_optimized_metric(tmp_path):
    from xtune.tasks.train import train

    cfg = compose("train", ["experiment=quickstart", "logger=csv", "callbacks=none", "trainer.max_epochs=2",
                            "trainer.enable_progress_bar=false", "trainer.limit_train_batches=5"],
                  output_dir=tmp_path)
    value = train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert value == summary["metrics"]["val/acc_best"]
    assert 0.0 <= value <= 1.0


def test_multirun_jobs_are_separate_wandb_runs_and_keep_no_secrets(tmp_path):
    secret = "s3cr3t" + "0" * 34
    env = offline_env(tmp_path, WANDB_API_KEY=secret, WANDB_MODE="offline")
    sweep = tmp_path / "sweep"
    result = run(["python", "train.py", "-m", "experiment=quickstart", "logger=wandb", "seed=1,2",
                  "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                  "trainer.limit_test_batches=2", f"hydra.sweep.dir={sweep}"], env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert [r.parent.parent.name for r in runs] == ["0", "1"]
    assert len({r.name.rsplit("-", 1)[-1] for r in runs}) == 2  # two run ids
    for wandb_run in runs:
        log = next(wandb_run.glob("run-*.wandb")).read_bytes()
        for name in (b"val/acc", b"train/loss", b"test/acc", b"trainer/global_step"):
            assert name in log, (wandb_run, name)
    for path in sweep.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in result.stdout + result.stderr
