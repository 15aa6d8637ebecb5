"""Every user mistake gets one clear line on stderr, exit code 2, and leaves nothing behind."""

import time

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import offline_env, run_cli, write_image_folder

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


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_named(tmp_path, workers):
    root = write_image_folder(tmp_path / "imgs", per_class=6)
    bad = root / "green" / "003.png"
    bad.write_bytes(b"\x89PNG but truncated")
    result = run_cli("train.py", *QUICK, "data=imagefolder", f"data.root={root}", "data.val_fraction=0",
                     "data.test_fraction=0.2", f"data.num_workers={workers}", "data.image_size=32",
                     f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    assert_one_line_error(result, f"cannot read image {bad}", "replace or delete the file")


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
    (["trainer.accelerator=gpu"], ["trainer.accelerator=gpu but no CUDA GPU is visible", "trainer=cpu"]),
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
    assert time.monotonic() - started < 60  # the Hub client alone would retry for ~46 s


def test_weights_unavailable_unreachable_hub(tmp_path):
    env = offline_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE")
    result = run_cli("train.py", *QUICK, "model.pretrained=true", f"hydra.run.dir={tmp_path / 'run'}",
                     tmp_path=tmp_path, env=env)
    assert_one_line_error(result, "cannot be reached")


def test_prefetch_offline(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "from xtune.cli import prefetch; prefetch()", "model=tiny",
                             f"hydra.run.dir={tmp_path / 'run'}"], env=offline_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
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
