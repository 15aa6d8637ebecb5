"""Hardware paths that run on this CPU machine: DDP on 2 processes, torch.compile, bench."""

import json

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import run_cli, summary

pytestmark = pytest.mark.slow


def test_ddp_sim_metrics_match_one_process(tmp_path):
    """Two CPU processes (gloo) train; the distributed test metric equals a 1-process eval of the
    same checkpoint (the test split has an even size, so no sample is padded in twice)."""
    run_dir = tmp_path / "ddp"
    result = run_cli("train.py", "experiment=quickstart", "trainer=ddp_sim", "trainer.max_epochs=2",
                     "logger=csv", "data.test_fraction=0.2003", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    assert s["hardware"]["world_size"] == 2 and s["hardware"]["strategy"] == "DDPStrategy"
    assert s["data"]["sizes"]["test"] == 360
    # each process saw half of each epoch: 1168 images / (64 x 2) = 10 steps per epoch
    assert s["global_step"] == 2 * 10
    assert not list(tmp_path.glob("*/train_ddp_process_1*"))  # rank 1 wrote into the same run dir
    eval_dir = tmp_path / "eval"
    result = run_cli("eval.py", f"ckpt_path={run_dir}/checkpoints/best.ckpt", "logger=none",
                     f"hydra.run.dir={eval_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    single = summary(eval_dir)["metrics"]
    assert single["test/acc"] == pytest.approx(s["metrics"]["test/acc"], abs=1e-6)
    assert single["test/loss"] == pytest.approx(s["metrics"]["test/loss"], abs=1e-4)


def test_compiled_backbone_round_trips_its_checkpoint(tmp_path):
    run_dir = tmp_path / "compiled"
    result = run_cli("train.py", "experiment=quickstart", "model.compile=true", "model.compile_backend=aot_eager", "trainer.max_epochs=1",
                     "logger=csv", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    keys = list(checkpoint["state_dict"])
    assert keys and not any("_orig_mod" in key for key in keys)
    assert any(key.startswith("backbone.conv1") for key in keys)
    eval_dir = tmp_path / "eval"
    result = run_cli("eval.py", f"ckpt_path={run_dir}/checkpoints/best.ckpt", "logger=none",
                     "model.compile=false", f"hydra.run.dir={eval_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(eval_dir)["metrics"]["test/acc"] == pytest.approx(summary(run_dir)["metrics"]["test/acc"], abs=1e-6)


def test_bench_tiny_grid(tmp_path):
    run_dir = tmp_path / "bench"
    result = run_cli("bench.py", "model=tiny", "data.image_size=32", "bench.batch_sizes=[8,16]",
                     "bench.steps=4", "bench.warmup_steps=2", "bench.repeats=2", f"hydra.run.dir={run_dir}",
                     tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "bench.json").read_text())
    rows = report["rows"]
    assert [row["batch_size"] for row in rows] == [8, 16]
    for row in rows:
        assert row["model"] == "test_resnet" and row["precision"] == "32-true"
        assert row["xtune_images_per_s"] > 0 and row["plain_images_per_s"] > 0
        assert row["xtune_over_plain"] == pytest.approx(row["xtune_step_s"] / row["plain_step_s"], rel=1e-3)
        assert len(row["xtune_step_s_repeats"]) == 2
        assert row["flops_per_step"] > 0 and row["mfu"] == "unknown"  # a CPU has no peak in the table
    for row in rows:  # the FLOP count of a real forward + backward at that batch size, counted here
        probe = timm.create_model("test_resnet", num_classes=1000).train()
        images, targets = torch.randn(row["batch_size"], 3, 32, 32), torch.randint(0, 1000, (row["batch_size"],))
        with FlopCounterMode(display=False) as counted:
            torch.nn.functional.cross_entropy(probe(images), targets).backward()
        assert row["flops_per_step"] == counted.get_total_flops()
    assert report["startup"]["seconds_to_first_step"] > 0
    table = (run_dir / "bench.md").read_text()
    assert "xtune/plain step time" in table and "| test_resnet | 32-true | 16 |" in table
    assert (run_dir / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_whole_job_against_timms_pipeline(tmp_path):
    """bench.mode=job: the same job through `python train.py` and through the hand-written loop on
    timm's create_dataset/create_loader/create_optimizer_v2/create_scheduler_v2, paired."""
    from helpers import write_image_folder

    root = tmp_path / "images"
    for split, count in (("train", 24), ("val", 8)):
        write_image_folder(root / split, per_class=count, size=20)
    run_dir = tmp_path / "bench"
    result = run_cli("bench.py", "bench.mode=job", "data=imagefolder", f"data.root={root}", "model=tiny",
                     "data.image_size=16", "data.batch_size=16", "bench.job.pairs=1", "bench.job.epochs=1",
                     "bench.job.workers=0", "hardware.channels_last=true", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "bench_job.json").read_text())
    # NHWC on both sides (timm's train.py --channels-last): the xtune run was given it too
    assert report["job"]["channels_last"] is True
    assert "channels_last: true" in (run_dir / "xtune_0" / "config.yaml").read_text()
    (pair,) = report["pairs"]
    assert pair["xtune_wall_s"] > 0 and pair["timm_wall_s"] > 0
    # CPU time of each side's process and its workers, measured apart from the wall time
    assert 0 < pair["xtune_cpu_s"] and 0 < pair["timm_cpu_s"]
    assert report["xtune_over_timm_cpu"] == pytest.approx(pair["xtune_cpu_s"] / pair["timm_cpu_s"], rel=1e-2)
    assert pair["xtune_train_images_per_s"] > 0 and pair["timm_train_images_per_s"] > 0
    assert 0 <= pair["xtune_val_acc"] <= 1 and 0 <= pair["timm_val_acc"] <= 1
    assert set(pair["xtune_phases_s"]) >= {"task", "checks", "data", "model", "trainer", "first_step", "last_step"}
    assert report["input_pipeline_images_per_s"]["xtune"] > 0 and report["input_pipeline_images_per_s"]["timm"] > 0
    assert report["xtune_over_timm_wall"] == pytest.approx(pair["xtune_wall_s"] / pair["timm_wall_s"], rel=1e-2)
    assert "timm pipeline, hand-written loop" in (run_dir / "bench_job.md").read_text()
    assert ", NHWC, on " in (run_dir / "bench_job.md").read_text()
