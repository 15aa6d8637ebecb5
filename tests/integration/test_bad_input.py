"""Every user mistake gets one clear line on stderr, exit code 2, and leaves nothing behind."""

import os
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import offline_env, run, run_cli, summary, write_image_folder

QUICK = ["experiment=quickstart", "logger=csv", "trainer.max_epochs=1"]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


def layout(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    elif case == "loose":
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "a.png")
    elif case == "mismatch":
        write_image_folder(root / "train", classes=("a", "b"), per_class=3)
        write_image_folder(root / "test", classes=("a", "c"), per_class=3)
    return root


@pytest.mark.parametrize("case,fragments", [
    ("missing", ["does not exist; pass data.root="]),
    ("empty", ["no class folders in", "put each class's images in"]),
    ("loose", ["no class folders in", "(1 loose files)"]),
    ("mismatch", ["class folders differ between train/ and test/", "lacks ['b']"]),
])
def test_bad_data_root(tmp_path, case, fragments):
    root = layout(tmp_path, case) if case != "missing" else tmp_path / "nope"
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *QUICK, "data=imagefolder", f"data.root={root}",
                     f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not run_dir.exists()  # nothing half-written


@pytest.mark.parametrize("workers,logger", [(0, "csv"), (1, "csv"), (0, "wandb")])
def test_corrupt_image_is_named(tmp_path, workers, logger):
    """A file whose header reads but whose pixels are cut off passes the check before training;
    decoding it names it, also from a DataLoader worker. With W&B running (offline), its teardown
    comes before the error: the error is still the last line on the screen (a fresh Python: the
    fork server's children end with os._exit, which skips the atexit teardown W&B would print)."""
    root = write_image_folder(tmp_path / "imgs", per_class=6, size=64)
    bad = root / "green" / "003.png"
    bad.write_bytes(bad.read_bytes()[:300])
    env = offline_env(tmp_path, WANDB_MODE="offline")
    quick = [f"logger={logger}" if arg.startswith("logger=") else arg for arg in QUICK]
    result = run_cli("train.py", *quick, "data=imagefolder", f"data.root={root}", "data.val_fraction=0",
                     "data.test_fraction=0.2", f"data.num_workers={workers}", "data.image_size=32",
                     f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path, env=env, fresh=logger == "wandb")
    assert_one_line_error(result, f"cannot read image {bad}", "replace or delete the file")
    assert bool(list(tmp_path.rglob("offline-run-*"))) == (logger == "wandb")  # W&B ran, and only then


def test_unknown_model_name(tmp_path):
    result = run_cli("train.py", *QUICK, "model.name=resnet5O", f"hydra.run.dir={tmp_path / 'run'}",
                     tmp_path=tmp_path)
    assert_one_line_error(result, "unknown timm model 'resnet5O'", "did you mean", "resnet50")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,fragments", [
    (["data.batch_size=0"], ["data.batch_size=0: expected an integer >= 1"]),
    (["optim.lr=-1"], ["optim.lr=-1: expected a number > 0"]),
    (["data=imagefolder"], ["data.root is required for imagefolder data"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0: expected an integer >= 1"]),
    (["ckpt_path=/no/such/last.ckpt"], ["ckpt_path=/no/such/last.ckpt: no such file"]),
    (["optim.opt=adamx"], ["optim:", "adamx"]),
    pytest.param(["trainer.accelerator=gpu"], ["trainer.accelerator=gpu but no CUDA GPU is visible", "trainer=cpu"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")),
])
def test_nonsense_values(tmp_path, overrides, fragments):
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *QUICK, *overrides, f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not run_dir.exists()


def test_checkpoints_that_are_not_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"definitely not a checkpoint")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    for script, path, fragment in (("train.py", garbage, "is not a checkpoint torch can read"),
                                   ("eval.py", garbage, "is not a checkpoint torch can read"),
                                   ("eval.py", plain, "is not an xtune checkpoint")):
        extra = QUICK if script == "train.py" else []
        result = run_cli(script, *extra, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}",
                         tmp_path=tmp_path)
        assert_one_line_error(result, f"ckpt_path={path}", fragment)


def test_eval_without_checkpoint(tmp_path):
    result = run_cli("eval.py", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    assert_one_line_error(result, "ckpt_path is required")


def test_weights_unavailable_offline_fails_in_seconds(tmp_path):
    started = time.monotonic()
    result = run_cli("train.py", *QUICK, "model.pretrained=true", f"hydra.run.dir={tmp_path / 'run'}",
                     tmp_path=tmp_path)
    assert_one_line_error(result, "pretrained weights test_resnet.r160_in1k", "xtune-prefetch",
                          "model.pretrained=false")
    # generous on a loaded 2-core machine: what it guards against is the Hub client's ~46 s of retries
    # on top of the start-up (the run itself takes ~2 s here)
    assert time.monotonic() - started < 45


def test_weights_unavailable_unreachable_hub(tmp_path):
    env = offline_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE")
    result = run_cli("train.py", *QUICK, "model.pretrained=true", f"hydra.run.dir={tmp_path / 'run'}",
                     tmp_path=tmp_path, env=env)  # HF_HUB_OFFLINE is read at import: a fresh Python
    assert_one_line_error(result, "cannot be reached")


def test_prefetch_offline(tmp_path):
    result = run(["xtune-prefetch", "model=tiny", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path=tmp_path)
    assert_one_line_error(result, "pretrained weights test_resnet.r160_in1k")


def test_local_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit").state_dict(), str(path))
    result = run_cli("train.py", *QUICK, f"model.weights={path}", f"hydra.run.dir={tmp_path / 'run'}",
                     tmp_path=tmp_path)
    assert_one_line_error(result, f"model.weights={path} does not fit test_resnet")


def test_a_finished_run_of_another_model_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stored = '{"status": "completed", "model": {"name": "vit_base_patch16_224"}}'
    (run_dir / "summary.json").write_text(stored)
    result = run_cli("train.py", *QUICK, f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert_one_line_error(result, "holds a completed run of model.name=vit_base_patch16_224")
    assert (run_dir / "summary.json").read_text() == stored
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("overrides,fragments", [
    (["optim.lrr=1"], ["optim.lrr: optim has no key 'lrr'", "did you mean optim.lr?"]),
    (["model=resnt"], ["model=resnt: there is no such model config", "did you mean resnet?"]),
    (["model=["], ["cannot read the command line"]),
    # one knob for layer decay: typed as a key, or added with +, where timm would drop it in silence
    (["optim.layer_decay=0.7"], ["optim.layer_decay is not a key any more: use finetune=layer_decay finetune.decay="]),
    (["finetune=full", "finetune.backbone_lr_scale=0.1", "+optim.layer_decay=0.7"],
     ["optim.layer_decay is not a key any more: use finetune=layer_decay finetune.decay="]),
    (["hydra.run.dir=/proc/xtune"], ["cannot write the run directory /proc/xtune", "paths.log_dir="]),
    (["-m", "hydra/launcher=slurm", "seed=1,2"], ["needs SLURM, but this machine has no sbatch"]),
    (["-m", "hydra/launcher=ray_tpu", "seed=1,2"], ["RAY_ADDRESS is not set"]),
])
def test_command_line_mistakes(tmp_path, overrides, fragments):
    env = offline_env(tmp_path)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "sbatch").exists())
    result = run_cli("train.py", *QUICK, *overrides, tmp_path=tmp_path, env=env)
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize("case,fragments", [
    ("one_class", ["needs at least 2 classes"]),
    ("loop", ["links back to", "a link loop in data.root"]),
    ("unreadable", ["2 of 24 images cannot be read", "delete or replace them"]),
])
def test_data_that_cannot_train(tmp_path, case, fragments):
    root = tmp_path / "data"
    if case == "one_class":
        write_image_folder(root, classes=("only",), per_class=8)
    elif case == "loop":
        write_image_folder(root, per_class=4)
        (root / "red" / "loop").symlink_to("..")
    elif case == "unreadable":
        write_image_folder(root, per_class=8)
        (root / "red" / "broken.png").write_bytes(b"not an image")
        (root / "blue" / "empty.jpg").write_bytes(b"")
        (root / "blue" / "000.png").unlink()
        (root / "green" / "000.png").unlink()
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *QUICK, "data=imagefolder", f"data.root={root}", f"hydra.run.dir={run_dir}",
                     tmp_path=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not run_dir.exists()


def test_eval_with_another_model_name_says_which_model_the_checkpoint_holds(tmp_path):
    run_dir = tmp_path / "convnext"
    trained = run_cli("train.py", *QUICK, "model.name=test_convnext", "trainer.limit_train_batches=2",
                      "trainer.limit_val_batches=1", "test=false", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_cli("eval.py", f"ckpt_path={run_dir}/checkpoints/best.ckpt", "model.name=test_resnet",
                     f"hydra.run.dir={tmp_path / 'eval'}", tmp_path=tmp_path)
    assert_one_line_error(result, "it holds a test_convnext, not a test_resnet", "drop model.name")


def test_a_truncated_checkpoint_message_is_whole(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(10000)}, "xtune": {}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[:20000])
    result = run_cli("eval.py", f"ckpt_path={cut}", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    last = assert_one_line_error(result, f"ckpt_path={cut} is not a checkpoint torch can read", "it may be truncated")
    assert last.endswith("e.g. RUN/checkpoints/last.ckpt")


def test_a_rerun_with_other_settings_is_refused_and_keeps_the_record(tmp_path):
    logs = tmp_path / "logs"
    common = [*QUICK, "trainer.limit_train_batches=3", f"paths.log_dir={logs}", "run_name=ref"]
    first = run_cli("train.py", *common, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = logs / "train" / "runs" / "ref"
    before = {name: (run_dir / name).read_bytes() for name in ("summary.json", "config.yaml", ".hydra/config.yaml")}
    result = run_cli("train.py", *common, "optim.lr=1e-4", "optim.weight_decay=0.01", tmp_path=tmp_path)
    assert_one_line_error(result, "holds a run with other settings (optim.lr 0.003 -> 0.0001, "
                          "optim.weight_decay 0.05 -> 0.01)", "pass another run_name")
    assert {name: (run_dir / name).read_bytes() for name in before} == before  # Hydra's record too


def test_resuming_on_changed_data_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=12)
    logs = tmp_path / "logs"
    common = [*QUICK, "trainer.max_epochs=2", "data=imagefolder", f"data.root={root}", "data.image_size=32",
              f"paths.log_dir={logs}", "run_name=changing"]
    first = run_cli("train.py", *common, "trainer.max_epochs=1", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (root / "red" / "000.png").unlink()
    result = run_cli("train.py", *common, tmp_path=tmp_path)  # a longer run: continues from last.ckpt
    assert_one_line_error(result, "was trained on other data: split sizes changed", "restore the data")
    assert summary(logs / "train" / "runs" / "changing")["epochs_completed"] == 1


def _mount_tmpfs(path: Path, size: str) -> bool:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path):
    """A 12 MB file system holds epoch 0's two checkpoints (4.6 MB each) and fills up in epoch 1.
    After space is freed, the same command continues from epoch 0's last.ckpt."""
    import subprocess

    logs = tmp_path / "small"
    if not _mount_tmpfs(logs, "12m"):
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk path is not tested")
    try:
        common = [*QUICK, "trainer.max_epochs=3", f"paths.log_dir={logs}", "run_name=full"]
        result = run_cli("train.py", *common, tmp_path=tmp_path)
        assert_one_line_error(result, "no space left on the disk", "run the same command again")
        run_dir = logs / "train" / "runs" / "full"
        leftovers = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"
                     and (".tmp" in p.name or p.stat().st_size == 0)]
        assert not leftovers, leftovers  # no half-written checkpoint, plot or summary
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
        subprocess.run(["mount", "-o", "remount,size=64m", str(logs)], check=True)
        again = run_cli("train.py", *common, tmp_path=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        with open(run_dir / "metrics.csv") as handle:
            import csv

            epochs = [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val/acc")]
        assert epochs == [0, 1, 2]  # no row of the failed attempt is repeated
    finally:
        subprocess.run(["umount", "-l", str(logs)], capture_output=True)


@pytest.mark.parametrize("overrides,fragments", [
    (["bench.mode=jobs"], ["bench.mode=jobs", "expected steps", "or job"]),
    (["bench.mode=job"], ["bench.mode=job", "data.root=None is not a folder", "data=imagefolder"]),
    (["bench.mode=job", "data=imagefolder", "data.root=/no/such/folder"], ["data.root=/no/such/folder"]),
])
def test_bench_mode_mistakes(tmp_path, overrides, fragments):
    assert_one_line_error(run_cli("bench.py", *overrides, tmp_path=tmp_path), *fragments)
