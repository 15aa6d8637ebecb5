"""`python bench.py bench.mode=job`: one whole training job on real image files, through xtune
and through a hand-written loop on timm's own public pipeline, paired and interleaved.

The loop is what timm's train.py does (the script is in timm's repository, not in its wheel):
`timm.data.create_dataset` + `create_loader` (uint8 batches normalised by its PrefetchLoader),
`create_model`, `create_optimizer_v2`, `create_scheduler_v2`, label-smoothing cross-entropy,
a validation pass after every epoch. Both run the same job as separate processes; reported per
side: whole-process wall time (median over pairs), training images/s, final validation accuracy,
and the images/s of each input pipeline alone (decode + augment + collate + normalise, no model).
xtune's side also says where its seconds go (summary.json's timing phases).

    python bench.py bench.mode=job data=imagefolder data.root=data/fashion_png model=tiny
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xtune.report import versions, write_json


def job_settings(cfg: DictConfig) -> dict:
    """The one job both sides run, from the bench config (configs/bench.yaml: bench.job)."""
    from xtune.errors import XtuneConfigError
    from xtune.hardware import wants_channels_last

    if not cfg.data.get("root") or not Path(str(cfg.data.root)).expanduser().is_dir():
        raise XtuneConfigError(f"bench.mode=job times a job on image files: data.root={cfg.data.get('root')} is not a "
                               "folder; pass data=imagefolder data.root=/path/to/images (class folders, or train/ "
                               "and val/ folders of them)")
    job = cfg.bench.job
    augment = cfg.data.augment
    return {
        "root": str(Path(str(cfg.data.root)).expanduser().resolve()),
        "model": cfg.model.name,
        "image_size": int(cfg.data.image_size or 32),
        "batch_size": int(cfg.data.batch_size),
        "workers": int(job.workers),
        "epochs": int(job.epochs),
        "lr": float(cfg.optim.lr),
        "weight_decay": float(cfg.optim.weight_decay),
        "warmup_epochs": int(cfg.scheduler.warmup_epochs),
        "label_smoothing": float(job.label_smoothing),
        "hflip": float(augment.hflip or 0.0),
        "scale": list(augment.scale or (0.08, 1.0)),
        "ratio": list(augment.ratio or (3 / 4, 4 / 3)),
        "seed": int(cfg.seed),
        # NHWC on both sides (timm's train.py --channels-last) when the profile asks for it on a CPU
        "channels_last": wants_channels_last(cfg, "cpu", backbone=None),
        # timm's train.py --opt-kwargs (+bench.job.timm_opt_kwargs.fused=true); by default none, as it runs
        "timm_opt_kwargs": OmegaConf.to_container(job.timm_opt_kwargs) if job.get("timm_opt_kwargs") else {},
    }


def xtune_command(job: dict, run_dir: Path) -> list[str]:
    script = Path(__file__).resolve().parents[3] / "train.py"  # python train.py, as a user runs it
    launcher = [str(script)] if script.exists() else ["-c", "from xtune.cli import train; train()"]
    return [sys.executable, *launcher, "model=tiny", f"model.name={job['model']}", "model.pretrained=false", "data=imagefolder",
            f"data.root={job['root']}", f"data.image_size={job['image_size']}", f"data.batch_size={job['batch_size']}",
            f"data.num_workers={job['workers']}", "data.crop_pct=1.0", f"data.augment.hflip={job['hflip']}",
            f"data.augment.scale=[{job['scale'][0]},{job['scale'][1]}]",
            f"data.augment.ratio=[{job['ratio'][0]},{job['ratio'][1]}]", "data.augment.color_jitter=null",
            f"optim.lr={job['lr']}", f"optim.weight_decay={job['weight_decay']}",
            f"scheduler.warmup_epochs={job['warmup_epochs']}", f"label_smoothing={job['label_smoothing']}",
            f"trainer.max_epochs={job['epochs']}", "data.test_fraction=0", "test=false", f"seed={job['seed']}",
            f"hardware.channels_last={str(job['channels_last']).lower()}", f"hydra.run.dir={run_dir}"]


def baseline_command(job: dict, out: Path) -> list[str]:
    return [sys.executable, "-m", "xtune.tasks.bench_job", "--job", json.dumps(job), "--out", str(out)]


def _timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system, the process and its loader workers): a noisy
    neighbour on a shared machine stretches the first, hardly the second."""
    started, used = time.time(), _children_cpu_s()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        from xtune.errors import XtuneError

        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise XtuneError(f"bench.mode=job: a timed run failed ({shlex.join(command[1:3])} ...): {last}")
    return round(time.time() - started, 2), round(_children_cpu_s() - used, 2)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_job(cfg: DictConfig, run_dir: Path) -> dict:
    """Pairs of (xtune, timm loop) runs of the same job, alternating which goes first."""
    job = job_settings(cfg)
    pairs = []
    for index in range(int(cfg.bench.job.pairs)):
        xtune_dir, baseline_out = run_dir / f"xtune_{index}", run_dir / f"timm_{index}.json"
        sides = [("xtune", xtune_command(job, xtune_dir)), ("timm", baseline_command(job, baseline_out))]
        walls, cpus = {}, {}
        for name, command in (sides if index % 2 == 0 else sides[::-1]):
            walls[name], cpus[name] = _timed(command)
        summary = json.loads((xtune_dir / "summary.json").read_text())
        baseline = json.loads(baseline_out.read_text())
        launch = summary["timing"]["phases_s"] or {}
        pairs.append({
            "xtune_wall_s": walls["xtune"], "timm_wall_s": walls["timm"],
            "xtune_cpu_s": cpus["xtune"], "timm_cpu_s": cpus["timm"],
            "xtune_train_images_per_s": summary["throughput"]["train_images_per_second"],
            "timm_train_images_per_s": baseline["train_images_per_s"],
            "xtune_val_acc": summary["metrics"].get("val/acc"), "timm_val_acc": baseline["val_acc"],
            "xtune_phases_s": launch,
            "xtune_after_last_step_s": round(walls["xtune"] - sum(v for k, v in launch.items()
                                                                   if k not in ("tested",)), 2),
        })
    medians = {key: round(statistics.median(p[key] for p in pairs), 3) for key in pairs[0] if key.endswith(("_s", "_acc"))
               and not isinstance(pairs[0][key], dict)}
    return {
        "job": job,
        "pairs": pairs,
        "median": medians,
        "xtune_over_timm_wall": round(medians["xtune_wall_s"] / medians["timm_wall_s"], 3),
        "xtune_over_timm_cpu": round(medians["xtune_cpu_s"] / medians["timm_cpu_s"], 3),
        "input_pipeline_images_per_s": pipelines(cfg, job),
        "versions": versions(),
    }


def job_markdown(report: dict) -> str:
    m, job = report["median"], report["job"]
    pipes = report["input_pipeline_images_per_s"]
    lines = [
        f"Job: {job['model']} from scratch at {job['image_size']} px, batch {job['batch_size']}, {job['epochs']} epochs, "
        f"{job['workers']} loader workers, {'NHWC' if job.get('channels_last') else 'NCHW'}, on {job['root']}; "
        f"medians of {len(report['pairs'])} interleaved pairs.",
        "",
        "| | wall (median) | CPU time (median) | train images/s | val acc | input pipeline alone, images/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| timm pipeline, hand-written loop | {m['timm_wall_s']:.1f} s | {m['timm_cpu_s']:.1f} s | "
        f"{m['timm_train_images_per_s']:.0f} | {m['timm_val_acc']:.3f} | {pipes['timm']:.0f} |",
        f"| xtune `python train.py` | {m['xtune_wall_s']:.1f} s | {m['xtune_cpu_s']:.1f} s | "
        f"{m['xtune_train_images_per_s']:.0f} | {m['xtune_val_acc']:.3f} | {pipes['xtune']:.0f} |",
        "",
        f"xtune / timm wall time: {report['xtune_over_timm_wall']}x; CPU time: {report['xtune_over_timm_cpu']}x"
        + (f" (the loop's optimizer kwargs: {job['timm_opt_kwargs']})" if job.get("timm_opt_kwargs") else "") + ".",
        "xtune's seconds, first pair (launch -> task: interpreter, imports, Hydra; then each phase): "
        + ", ".join(f"{k} {v}" for k, v in report["pairs"][0]["xtune_phases_s"].items())
        + f"; after the last step: {report['pairs'][0]['xtune_after_last_step_s']} s.",
    ]
    return "\n".join(lines) + "\n"


def pipelines(cfg: DictConfig, job: dict) -> dict:
    """Images/s of each input pipeline alone: one epoch of training batches, no model."""
    import timm
    import torch

    from xtune.config.instantiate import build

    datamodule = build(cfg.data, "data", num_workers=job["workers"])
    datamodule.resolve_transforms(timm.create_model(job["model"], pretrained=False, num_classes=datamodule.num_classes))
    loader = datamodule.train_dataloader()

    def rate(batches, prepare=lambda x: x) -> float:
        count, started = 0, None
        for step, (images, _) in enumerate(batches):
            images = prepare(images)
            if step == 1:  # the first batch waits for the workers to start
                started, count = time.perf_counter(), 0
            count += images.shape[0]
        return round(count / (time.perf_counter() - started), 1)

    ours = rate(loader, lambda x: datamodule.batch_preprocess(x, training=True))
    theirs = rate(_timm_loader(job, is_training=True)[0])
    del loader
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"xtune": ours, "timm": theirs}


# --- the hand-written loop on timm's pipeline ----------------------------------------------------

def _timm_loader(job: dict, is_training: bool):
    import torch
    from timm.data import create_dataset, create_loader

    split = "train" if is_training else "val"
    dataset = create_dataset("", root=job["root"], split=split, is_training=is_training)
    loader = create_loader(
        dataset, input_size=(3, job["image_size"], job["image_size"]), batch_size=job["batch_size"],
        is_training=is_training, scale=tuple(job["scale"]), ratio=tuple(job["ratio"]), hflip=job["hflip"],
        color_jitter=None, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        num_workers=job["workers"], crop_pct=1.0, device=torch.device("cpu"), use_prefetcher=True,
        persistent_workers=job["workers"] > 0)
    return loader, len(dataset.reader.class_to_idx) if hasattr(dataset, "reader") else None


def timm_loop(job: dict) -> dict:
    """What timm's train.py does for this job, written out: the plain reference."""
    import timm
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(job["seed"])
    train_loader, num_classes = _timm_loader(job, is_training=True)
    val_loader, _ = _timm_loader(job, is_training=False)
    model = timm.create_model(job["model"], pretrained=False, num_classes=num_classes)
    memory_format = torch.channels_last if job.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=job["lr"], weight_decay=job["weight_decay"],
                                    **job.get("timm_opt_kwargs", {}))
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=job["epochs"],
                                       warmup_epochs=job["warmup_epochs"], updates_per_epoch=len(train_loader),
                                       step_on_epochs=False)
    criterion = LabelSmoothingCrossEntropy(smoothing=job["label_smoothing"])
    images_seen, train_seconds, updates, accuracy = 0, 0.0, 0, None
    for epoch in range(job["epochs"]):
        model.train()
        last = None
        for step, (images, targets) in enumerate(train_loader):
            loss = criterion(model(images.contiguous(memory_format=memory_format)), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            now = time.perf_counter()
            if last is not None and updates > 3:  # as xtune's RunStats counts: past the first 3 steps
                images_seen += images.shape[0]
                train_seconds += now - last
            last = now
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, targets in val_loader:
                correct += int((model(images.contiguous(memory_format=memory_format)).argmax(1) == targets).sum())
                total += targets.shape[0]
        accuracy = correct / total
    return {"train_images_per_s": round(images_seen / train_seconds, 1) if train_seconds else None,
            "val_acc": round(accuracy, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description="the timm-pipeline reference loop of bench.py bench.mode=job")
    parser.add_argument("--job", required=True, help="the job as JSON (bench_job.job_settings)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    write_json(Path(args.out), timm_loop(json.loads(args.job)))


if __name__ == "__main__":
    main()
