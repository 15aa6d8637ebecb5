"""Preemption is normal: killed runs continue where they stopped and end as if never stopped."""

import os
import signal
import time

import pytest
import torch

import helpers
from helpers import REFERENCE, ROOT, run_cli, summary

pytestmark = pytest.mark.slow

COMMON = REFERENCE


def start(tmp_path, *overrides):
    """`python train.py ...` started (through the fork server: a real process, signals and all)."""
    return helpers.start(["python", str(ROOT / "train.py"), *COMMON, *overrides], tmp_path=tmp_path)


def wait_for(path, timeout=240):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def weights(run_dir):
    """The model's weights, and with EMA the live ones beside the averaged."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {f"{key}.{name}": value for key in ("state_dict", "current_model_state")
            for name, value in checkpoint.get(key, {}).items()}


@pytest.fixture
def reference(reference_run):
    return reference_run


def assert_same_run(run_dir, reference, epochs=3):
    ours, theirs = summary(run_dir), summary(reference)
    assert ours["status"] == "completed"
    assert ours["metrics"] == theirs["metrics"]  # test/*, val/*, train/*, the learning rates
    assert ours["global_step"] == theirs["global_step"] == epochs * 73
    a, b = weights(run_dir), weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours["history"] == theirs["history"] and len(ours["history"]) == epochs


def test_a_signal_mid_epoch_then_the_same_command_continues_exactly(tmp_path, reference):
    """SIGTERM (a kill, a spot VM going away) mid-epoch. SIGUSR1/USR2 (SLURM) and Ctrl-C set the
    same stop flag (tests/unit/test_preemption.py); tests/cluster preempts a job with USR2."""
    args = [f"paths.log_dir={tmp_path}", "run_name=interrupted"]
    run_dir = tmp_path / "train" / "runs" / "interrupted"
    process = start(tmp_path, *args)
    wait_for(run_dir / "checkpoints" / "last.ckpt")  # end of epoch 0 (73 steps)
    time.sleep(1.0)  # into epoch 1
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    last_line = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last_line.startswith("error: interrupted at epoch") and "run the same command again" in last_line
    interrupted = summary(run_dir)
    assert interrupted["status"] == "interrupted" and 73 < interrupted["global_step"] < 3 * 73  # mid-epoch

    result = run_cli("train.py", *COMMON, *args, tmp_path=tmp_path)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    assert_same_run(run_dir, reference)
    assert sorted(int(epoch) for epoch, _, _ in validation_rows(run_dir)) == [0, 1, 2]  # no epoch logged twice


SIGNAL_ONCE = """
import os, signal
import pytorch_lightning as pl

class SignalOnce(pl.Callback):
    \"\"\"SIGTERM to this process, once per marker file: after batch 1 of epoch 1's validation
    (its last batch for "validation_end"), or of the test ("test", which first notes last.ckpt's
    mtime); "twice": inside epoch 1's first validation, then (the next run) after the last batch
    of its second (val_check_interval 1/3).\"\"\"
    def __init__(self, marker, stage):
        self.marker, self.stage = marker, stage
    def _signal(self, batch_idx, at, marker):
        if batch_idx == at and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch != 1 or trainer.sanity_checking:
            return
        last = trainer.num_val_batches[0] - 1
        if self.stage == "twice":
            first = trainer.fit_loop.epoch_loop.batch_idx < trainer.num_training_batches // 2
            self._signal(batch_idx, 1 if first else last, self.marker + ("" if first else "2"))
        elif self.stage.startswith("validation"):
            self._signal(batch_idx, last if self.stage == "validation_end" else 1, self.marker)
    def on_test_start(self, trainer, pl_module):
        last = os.path.join(trainer.checkpoint_callback.dirpath, "last.ckpt")
        if self.stage == "test" and not os.path.exists(self.marker):
            open(self.marker + ".mtime", "w").write(str(os.stat(last).st_mtime_ns))
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.stage == "test":
            self._signal(batch_idx, 1, self.marker)
"""

STOPS_AFTER_EPOCH_1 = "callbacks.early_stopping.patience=1 callbacks.early_stopping.min_delta=0.5"


@pytest.mark.parametrize("stage, overrides, epochs", [
    ("validation", "", 3),
    ("validation", "callbacks=[default,ema]", 3),
    ("validation_end", "", 3),
    ("test", STOPS_AFTER_EPOCH_1, 2),
], ids=["validation", "validation-ema", "validation-last-batch", "test-after-early-stop"])
def test_a_signal_outside_training_batches_then_the_same_command_continues_exactly(tmp_path, reference, stage,
                                                                                  overrides, epochs):
    """- In the epoch's validation (its training done): Lightning alone resumed such a checkpoint
    as saved after the validation, skipped it, and the epoch ended without val/acc.
    - After the validation's last batch: the epoch ends, then the run stops (its record once
    gained a row for the next epoch, with this one's metrics).
    - With EMA the validation runs on the averaged weights: the live ones must be the ones saved.
    - In the test of the best checkpoint, after early stopping ended the fit: the fit's last.ckpt
    stays as it was (the model holds the best weights by then), the resumed run trains no more
    epochs (Lightning does not keep the stop decision) and reports the fit's metrics."""
    overrides = overrides.split()
    if overrides:  # its own uninterrupted run
        result = run_cli("train.py", *COMMON, *overrides, f"paths.log_dir={tmp_path}", "run_name=ref", tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        reference = tmp_path / "train" / "runs" / "ref"
    (tmp_path / "signal_once.py").write_text(SIGNAL_ONCE)
    env = helpers.offline_env(tmp_path, PYTHONPATH=tmp_path)
    args = [*overrides, f"paths.log_dir={tmp_path}", "run_name=stopped", "+callbacks.signal._target_=signal_once.SignalOnce",
            f"+callbacks.signal.marker={tmp_path / 'signalled'}", f"+callbacks.signal.stage={stage}"]
    run_dir = tmp_path / "train" / "runs" / "stopped"
    interrupted = run_cli("train.py", *COMMON, *args, tmp_path=tmp_path, env=env)
    assert interrupted.returncode == 143, interrupted.stderr[-2000:]
    stopped = summary(run_dir)  # epoch 1 trained; its validation (or the test) not done, or just done
    finished = 1 if stage == "validation" else 2  # epochs whole when it stopped: their rows, no other
    assert stopped["global_step"] == 2 * 73 and stopped["epoch"] == finished
    assert stopped["history"] == summary(reference)["history"][:finished]
    assert ("kept the fit's" if stage == "test" else ": saved") in interrupted.stderr.splitlines()[-1]
    if stage == "test":  # the fit's last.ckpt as the fit left it
        last = run_dir / "checkpoints" / "last.ckpt"
        assert (tmp_path / "signalled.mtime").read_text() == str(last.stat().st_mtime_ns)

    result = run_cli("train.py", *COMMON, *args, tmp_path=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir, reference, epochs=epochs)


def validation_rows(run_dir):
    import csv

    with open(run_dir / "metrics.csv") as handle:
        return [(r["epoch"], r["step"], r["val/acc"]) for r in csv.DictReader(handle) if r.get("val/acc")]


def test_two_stops_in_one_epoch_of_several_validations_continue_exactly(tmp_path):
    """val_check_interval 1/3: a stop inside epoch 1's first validation, then (in the resumed run)
    one after the last batch of its second. The first resume once left the validation's batch
    count one ahead, and the second resume ran the finished validation again: a second row for
    it in metrics.csv, and one more round counted by early stopping."""
    common = [*COMMON, "trainer.val_check_interval=0.3333", f"paths.log_dir={tmp_path}"]
    result = run_cli("train.py", *common, "run_name=ref", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "signal_once.py").write_text(SIGNAL_ONCE)
    env = helpers.offline_env(tmp_path, PYTHONPATH=tmp_path)
    args = [*common, "run_name=stopped", "+callbacks.signal._target_=signal_once.SignalOnce",
            f"+callbacks.signal.marker={tmp_path / 'signalled'}", "+callbacks.signal.stage=twice"]
    for _ in range(2):
        stopped = run_cli("train.py", *args, tmp_path=tmp_path, env=env)
        assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert (tmp_path / "signalled2").exists()
    result = run_cli("train.py", *args, tmp_path=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir, reference = tmp_path / "train" / "runs" / "stopped", tmp_path / "train" / "runs" / "ref"
    assert_same_run(run_dir, reference)
    assert validation_rows(run_dir) == validation_rows(reference)


def test_sigkill_at_any_moment_leaves_a_resumable_run(tmp_path, reference):
    """No chance to save: the run continues from its last end-of-epoch checkpoint, which a kill
    during its write cannot have broken (written to a temporary file, then renamed)."""
    args = [f"paths.log_dir={tmp_path}", "run_name=killed"]
    run_dir = tmp_path / "train" / "runs" / "killed"
    process = start(tmp_path, *args)
    wait_for(run_dir / "checkpoints" / "last.ckpt")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    result = run_cli("train.py", *COMMON, *args, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir, reference)


def test_a_completed_named_run_is_not_trained_again(tmp_path, reference):
    args = [f"paths.log_dir={reference.parents[2]}", "run_name=ref"]
    files = [reference / "summary.json", reference / "checkpoints" / "last.ckpt"]
    before = [(path.read_bytes(), path.stat().st_mtime_ns) for path in files]
    result = run_cli("train.py", *COMMON, *args, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already holds a completed run" in result.stdout + result.stderr
    assert [(path.read_bytes(), path.stat().st_mtime_ns) for path in files] == before  # nothing trained or written
    refused = run_cli("train.py", *COMMON, *args, "resume=never", tmp_path=tmp_path)
    assert refused.returncode == 2
    assert "already holds a run; choose another run_name" in refused.stderr.splitlines()[-1]


def test_atomic_checkpoint_write_survives_a_crash_mid_write(tmp_path, monkeypatch):
    from xtune.hardware.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    restored = torch.load(target, weights_only=True)
    assert restored["step"] == 1 and torch.equal(restored["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no half file left behind
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"
