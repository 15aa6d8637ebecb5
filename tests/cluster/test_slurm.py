"""Against a real SLURM cluster (.ci/run starts a local one with slurm/local/start.sh)."""

import csv
import shutil
import signal  # noqa: F401 - documents the signal the test sends through scancel
import subprocess
import sys
import time

import pytest
import torch

from helpers import REFERENCE, ROOT, offline_env, summary


def cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and any(state in result.stdout for state in ("idle", "mix", "alloc"))


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cluster_up(), reason="no SLURM cluster reachable (no sinfo, or no node up); "
                                                "start one with: bash slurm/local/start.sh"),
]

RUN = REFERENCE
SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=30", "hydra.launcher.cpus_per_task=2"]


def sweep(tmp_path, *overrides):
    return [sys.executable, str(ROOT / "train.py"), "-m", *SLURM, *overrides]


def test_a_three_job_sweep_reports_the_failure_and_completes_the_rest(tmp_path):
    out = tmp_path / "sweep"
    result = subprocess.run(sweep(tmp_path, "experiment=quickstart", "logger=csv", "trainer.max_epochs=1",
                                  "model.name=test_resnet,nope_model,test_convnext", f"hydra.sweep.dir={out}"),
                            cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    with open(out / "sweep_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["overrides"], r["status"]) for r in rows] == [
        ("model.name=test_resnet", "completed"), ("model.name=nope_model", "failed"),
        ("model.name=test_convnext", "completed")]
    assert "unknown timm model 'nope_model'" in rows[1]["error"]
    # the three jobs really ran as SLURM array tasks
    logs = sorted((out / ".submitit").glob("*_*/*_log.out"))
    assert len(logs) == 3


@pytest.fixture
def reference(reference_run):
    """The uninterrupted run a preempted one must reproduce (shared with test_resume.py)."""
    return reference_run


def preempt(job: str, how: str, tmp_path) -> None:
    if how == "signal":  # what SLURM sends a submitit job before preempting it: USR2
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    else:  # real preemption: a job in the higher-priority partition needs all the node's CPUs
        cpus = subprocess.run(["sinfo", "-h", "-p", "urgent", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
        subprocess.run(["sbatch", "-p", "urgent", "-c", cpus, "-o", str(tmp_path / "urgent.out"), "--wrap", "sleep 5"],
                       check=True, capture_output=True)


@pytest.mark.parametrize("how", ["signal", "urgent_job"])
def test_a_preempted_job_is_requeued_and_ends_as_if_never_stopped(tmp_path, reference, how):
    out = tmp_path / "sweep"
    process = subprocess.Popen(sweep(tmp_path, *RUN, "seed=42", f"hydra.sweep.dir={out}"), cwd=ROOT,
                               env=offline_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not checkpoint.exists():
        assert time.time() < deadline and process.poll() is None, "the job never finished its first epoch"
        time.sleep(0.5)
    job = subprocess.run(["squeue", "-h", "-p", "debug", "-o", "%i"], capture_output=True, text=True).stdout.split()[0]
    preempt(job, how, tmp_path)
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]

    for _ in range(60):  # accounting lags the job's end by a few seconds
        history = subprocess.run(["sacct", "-n", "-X", "-D", "-j", job.split("_")[0], "-o", "State"],
                                 capture_output=True, text=True).stdout.split()
        if history and history[-1] == "COMPLETED":
            break
        time.sleep(1)
    assert "REQUEUED" in history and history[-1] == "COMPLETED", history
    log = (out / "0" / "train.log").read_text()  # the job's own log survives the requeue
    assert "interrupted at epoch" in log and "resuming from" in log

    ours, theirs = summary(out / "0"), summary(reference)
    for key in ("test/acc", "test/loss", "val/acc_best", "train/loss"):
        assert ours["metrics"][key] == theirs["metrics"][key], key
    a = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu",
                   weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
