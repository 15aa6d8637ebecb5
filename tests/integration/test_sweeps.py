"""Sweeps: local multirun summaries, Optuna searches that survive interruption, Ray."""

import csv
import signal
import sys
import time

import pytest
import yaml

from helpers import ROOT, offline_env, run, start, summary

pytestmark = pytest.mark.slow

TINY = ["experiment=quickstart", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]


def multirun(tmp_path, *overrides, env=None, timeout=900):
    return run(["python", "train.py", "-m", *TINY, *overrides], cwd=ROOT, env=env, tmp_path=tmp_path, timeout=timeout)


def test_a_failing_job_is_reported_and_the_others_complete(tmp_path):
    sweep = tmp_path / "sweep"
    result = multirun(tmp_path, "logger=wandb", "model.name=test_resnet,nope_model,test_convnext",
                      f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: 1 of 3 jobs failed (first: job 1: unknown timm model 'nope_model'")
    with open(sweep / "sweep_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["overrides"] for r in rows] == ["model.name=test_resnet", "model.name=nope_model",
                                              "model.name=test_convnext"]
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert "unknown timm model 'nope_model'" in rows[1]["error"]
    for row, job in ((rows[0], "0"), (rows[2], "2")):
        assert float(row["val/acc_best"]) == summary(sweep / job)["metrics"]["val/acc_best"]
        assert float(row["wall_time_s"]) > 0
    markdown = (sweep / "sweep_summary.md").read_text()
    assert "2 of 3 jobs completed." in markdown and "Best val/acc_best" in markdown
    assert (sweep / "sweep_summary.png").read_bytes()[:4] == b"\x89PNG"
    # each completed job is its own W&B run, grouped by the sweep
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert [r.parents[1].name for r in runs] == ["0", "2"]
    for wandb_run in runs:
        assert sweep.name.encode() in next(wandb_run.glob("run-*.wandb")).read_bytes()


def optuna(tmp_path, logs, *overrides, env=None):
    return [sys.executable, str(ROOT / "train.py"), "hparams_search=optuna", *TINY, "logger=csv",
            f"paths.log_dir={logs}", *overrides]


def results(logs, study="study"):
    return yaml.safe_load((logs / "train" / "optuna" / study / "optimization_results.yaml").read_text())


def test_an_interrupted_optuna_search_continues_to_n_trials(tmp_path):
    logs = tmp_path / "logs"
    sweep = logs / "train" / "optuna" / "test_resnet_full"  # the default study name: <model.name>_<finetune>
    env = offline_env(tmp_path)
    process = start(optuna(tmp_path, logs, "hydra.sweeper.n_trials=3"), cwd=ROOT, env=env, tmp_path=tmp_path)
    deadline = time.time() + 600
    while not (sweep / "1" / ".hydra").exists():  # trial 1 has started
        assert time.time() < deadline and process.poll() is None, "the search never reached trial 1"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert (sweep / "optuna.db").exists() and not (sweep / "optimization_results.yaml").exists()

    result = run(optuna(tmp_path, logs, "hydra.sweeper.n_trials=3"), cwd=ROOT, env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = results(logs, sweep.name)
    assert found["n_complete"] == 3  # exactly n finished trials, one of them from before the kill
    assert found["n_trials"] == 4 and found["n_failed"] == 1  # the killed trial is kept as failed
    import optuna as op

    study = op.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep}/optuna.db")
    assert study.user_attrs["interrupted_trials"] == [1]
    assert study.trials[1].state == op.trial.TrialState.FAIL
    assert summary(sweep / "1")["status"] == "interrupted"
    assert "3 of 4 jobs completed." in (sweep / "sweep_summary.md").read_text()
    assert set(found["best_params"]) == {"optim.lr", "optim.weight_decay", "model.drop_path_rate", "label_smoothing"}
    assert found["best_value"] == max(t.value for t in study.trials if t.value is not None)


def test_failed_trials_are_recorded_not_fatal(tmp_path):
    """Deterministic: a brute-force sampler over one choice tries each value exactly once."""
    sweep = tmp_path / "sweep"
    result = multirun(tmp_path, "hydra/sweeper=optuna", "model.name=choice(test_resnet,nope_model)", "logger=csv",
                      "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler", "hydra.sweeper.n_trials=2",
                      "+hydra.callbacks.sweep_summary.fail_on_job_error=false",  # as hparams_search=optuna sets it
                      f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-2000:]  # failed trials are part of a search
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert (found["n_trials"], found["n_complete"], found["n_failed"]) == (2, 1, 1), found
    assert found["best_params"] == {"model.name": "test_resnet"}
    assert "unknown timm model 'nope_model'" in (sweep / "sweep_summary.md").read_text()


def test_ray_launcher_runs_a_two_job_sweep(tmp_path):
    import shutil
    import tempfile

    sweep = tmp_path / "sweep"
    env = offline_env(tmp_path, HOME=tmp_path / "home")  # Ray writes ~/.ray
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's sockets need a short path
    try:
        result = multirun(tmp_path, "hydra/launcher=ray", "logger=csv", "seed=1,2",
                          "+hydra.launcher.ray.init.num_cpus=2", f"+hydra.launcher.ray.init._temp_dir={ray_dir}",
                          "+hydra.launcher.ray.init.include_dashboard=false", f"hydra.sweep.dir={sweep}", env=env)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [summary(sweep / job)["status"] for job in ("0", "1")] == ["completed", "completed"]
    assert summary(sweep / "0")["seed"] == 1 and summary(sweep / "1")["seed"] == 2
    assert "2 of 2 jobs completed." in (sweep / "sweep_summary.md").read_text()


def test_ddp_jobs_in_a_multirun_do_not_sweep_again(tmp_path):
    """Lightning starts DDP ranks by re-running the command line; in a multirun that line is the
    whole sweep. Each job's ranks must re-run that job only, in that job's folder."""
    sweep = tmp_path / "sweep"
    result = multirun(tmp_path, "trainer=ddp_sim", "logger=csv", "seed=1,2", f"hydra.sweep.dir={sweep}",
                      f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, seed in (("0", 1), ("1", 2)):
        s = summary(sweep / job)
        assert s["hardware"]["world_size"] == 2 and s["seed"] == seed
    assert not (tmp_path / "logs").exists()  # no rank started a run or a sweep of its own
