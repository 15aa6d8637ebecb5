"""Training images/s of issue 13's job with the loader workers at nice 10 (the default) and at
nice 0, beside the timm-pipeline loop, in interleaved rounds (the order flips every round).

    python experiments/hardware_comparison/worker_nice_ab.py /tmp/fashion_png --rounds 6 --epochs 5
    python experiments/hardware_comparison/worker_nice_ab.py /tmp/fashion_png --model efficientnet_lite0 \
        --image-size 64 --channels-last --rounds 3 --epochs 1 --no-timm

The job is bench.py bench.mode=job's (xtune/tasks/bench_job.py builds both commands); writes
worker_nice_ab.json (each round's images/s per arm, medians) into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from xtune.tasks.bench_job import baseline_command, xtune_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the image folder (make_fashion_folder.py)")
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-timm", action="store_true", help="only the two xtune arms")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    job = {"root": str(Path(args.root).resolve()), "model": args.model, "image_size": args.image_size,
           "batch_size": 64, "workers": 2, "epochs": args.epochs, "lr": 3e-3, "weight_decay": 0.05,
           "warmup_epochs": 1, "label_smoothing": 0.1, "hflip": 0.5, "scale": [0.8, 1.0], "ratio": [3 / 4, 4 / 3],
           "seed": args.seed, "channels_last": args.channels_last, "timm_opt_kwargs": {}}
    arms = {"nice10": ["data.worker_nice=10"], "nice0": ["data.worker_nice=0"]}
    if not args.no_timm:
        arms["timm"] = None
    results = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = list(arms) if round_ % 2 == 0 else list(arms)[::-1]
            for name in order:
                run = Path(scratch) / f"{name}_{round_}"
                if arms[name] is None:
                    subprocess.run(baseline_command(job, run.with_suffix(".json")), check=True, capture_output=True)
                    rate = json.loads(run.with_suffix(".json").read_text())["train_images_per_s"]
                else:
                    subprocess.run(xtune_command(job, run) + arms[name], check=True, capture_output=True)
                    rate = json.loads((run / "summary.json").read_text())["throughput"]["train_images_per_second"]
                results[name].append(round(rate, 1))
                print(round_, name, round(rate), flush=True)
    report = {"job": job, "train_images_per_s": results,
              "median": {name: statistics.median(rates) for name, rates in results.items()}}
    Path(args.out, "worker_nice_ab.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["median"]))


if __name__ == "__main__":
    main()
