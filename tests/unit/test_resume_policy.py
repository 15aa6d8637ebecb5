"""resume=auto against a stored run: which differences continue it and which are refused."""

import json

import pytest
import yaml
from omegaconf import OmegaConf

from xtune.errors import XtuneConfigError
from xtune.launch.resume import resume_point

STORED = {"run_name": "2026-12-02_09-20-39", "seed": 42, "optim": {"lr": 3e-3},
          "trainer": {"max_epochs": 5}, "model": {"name": "resnet18"}}


def _run_dir(tmp_path, completed=False):
    run = tmp_path / "sweep" / "0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "config.yaml").write_text(yaml.safe_dump(STORED))
    if completed:
        (run / "summary.json").write_text(json.dumps({"status": "completed", "model": {"name": "resnet18"}}))
    return run


def _attempt(run, **changes):
    current = json.loads(json.dumps(STORED))
    for key, value in changes.items():
        node = current
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    cfg = OmegaConf.create({**current, "resume": "auto", "ckpt_path": None})
    return resume_point(cfg, run, current)


def test_a_requeued_sweep_job_with_a_new_default_run_name_continues(tmp_path):
    """A SLURM requeue re-resolves run_name (the time) while the job's directory stays: same run."""
    run = _run_dir(tmp_path)
    checkpoint, summary = _attempt(run, run_name="2026-12-02_09-21-11")
    assert checkpoint == str(run / "checkpoints" / "last.ckpt") and summary is None


def test_a_longer_budget_continues_and_other_training_is_refused(tmp_path):
    run = _run_dir(tmp_path)
    assert _attempt(run, **{"trainer.max_epochs": 10})[0] == str(run / "checkpoints" / "last.ckpt")
    with pytest.raises(XtuneConfigError, match=r"optim\.lr 0\.003 -> 0\.0001.*another run_name"):
        _attempt(run, **{"optim.lr": 1e-4})


def test_a_completed_run_returns_its_result_unless_the_budget_grows(tmp_path):
    run = _run_dir(tmp_path, completed=True)
    assert _attempt(run, run_name="other")[1]["status"] == "completed"
    assert _attempt(run, **{"trainer.max_epochs": 10}) == (str(run / "checkpoints" / "last.ckpt"), None)
