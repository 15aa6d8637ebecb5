"""Results table and plot of the Fashion-MNIST study, from its runs' summary.json files.

    python experiments/fashion_mnist/make_table.py /work/study/train/runs  [more folders of runs]

Every completed run under the given folders becomes a row (init: pretrained Lite0 or scratch;
strategy; label budget; image size; epochs; lr; val/acc_best; test/acc; train images/s; NHWC:
whether it ran channels_last, 1.7-1.9x faster for Lite0 on this CPU; wall time). Writes
results.json, results.md and results.png beside this script, with the published rows of
Fashion-MNIST's benchmark table and the seed's MLP baseline for comparison. Rows already in
results.json whose run is not among the given folders are kept (runs of earlier sessions).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
#: from Fashion-MNIST's README (Debian's dataset-fashion-mnist ships it) and the seed's Keras MLP
PUBLISHED = [
    ("the seed's Keras MLP (784-128-10, Adam, 10 epochs), run here", 0.873),
    ("MLP 256-128-100", 0.883),
    ("2 Conv + pooling (TensorFlow's doc)", 0.916),
    ("ResNet18 (augmented)", 0.949),
    ("MobileNet (horizontal flips)", 0.950),
    ("DenseNet-BC 768K", 0.954),
    ("WRN-28-10", 0.959),
    ("WRN40-4", 0.967),
]
STRATEGIES = ["linear_probe", "lora", "layer_decay", "full"]


def runs(folders: list[Path]) -> list[dict]:
    rows = []
    for summary_file in sorted(p for folder in folders for p in folder.rglob("summary.json")):
        s = json.loads(summary_file.read_text())
        if s.get("status") != "completed" or "test/acc" not in s.get("metrics", {}):
            continue
        config = yaml.safe_load((summary_file.parent / "config.yaml").read_text())
        weights = config["model"].get("weights")
        rows.append({
            "run": str(summary_file.parent),
            "model": config["model"]["name"],
            "init": "pretrained" if weights else "scratch",
            "strategy": s["finetune"]["strategy"],
            "budget": float(config["data"]["train_fraction"]),
            "train_images": s["data"]["sizes"]["train"],
            "image_size": config["data"]["image_size"],
            "channels_last": bool((config.get("hardware") or {}).get("channels_last")),
            "epochs": s["epochs_completed"],
            "lr": float(config["optim"]["lr"]),
            "val_acc_best": s["metrics"]["val/acc_best"],
            "test_acc": s["metrics"]["test/acc"],
            "images_per_s": s["throughput"]["train_images_per_second"],
            "wall_s": s["wall_time_s"],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| labels | init | strategy | model | px | epochs | lr | val acc | **test acc** | train img/s | NHWC | wall |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    order = {name: i for i, name in enumerate(STRATEGIES)}
    for r in sorted(rows, key=lambda r: (r["budget"], r["init"] != "scratch", order.get(r["strategy"], 9), r["model"], r["image_size"])):
        lines.append(f"| {r['budget']:.0%} ({r['train_images']:,}) | {r['init']} | {r['strategy']} | {r['model']} | "
                     f"{r['image_size']} | {r['epochs']} | {r['lr']:g} | {r['val_acc_best']:.4f} | **{r['test_acc']:.4f}** | "
                     f"{r['images_per_s']:.0f} | {'yes' if r['channels_last'] else 'no'} | {r['wall_s'] / 60:.1f} min |")
    lines += ["", "Published (Fashion-MNIST's benchmark table; test accuracy):", "",
              "| classifier | test acc |", "|---|---:|"]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in PUBLISHED]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    lite0 = [r for r in rows if r["model"] == "tf_efficientnet_lite0"]
    for init, strategy, style in [("scratch", "full", "k--o"), *[("pretrained", s, "-o") for s in STRATEGIES]]:
        points = sorted((r["train_images"], r["test_acc"]) for r in lite0
                        if r["init"] == init and r["strategy"] == strategy and r["image_size"] == 64)
        if points:
            axis.plot(*zip(*points), style, label=f"Lite0 {init} {strategy}" if init == "pretrained" else "Lite0 from scratch")
    for r in lite0:  # runs at another image size: single marked points
        if r["image_size"] != 64:
            axis.plot(r["train_images"], r["test_acc"], "*", markersize=11,
                      label=f"Lite0 {r['init']} {r['strategy']}, {r['image_size']} px")
    axis.axhline(0.873, color="tab:red", linestyle=":", label="seed's MLP, all labels (0.873)")
    axis.axhline(0.949, color="tab:gray", linestyle=":", label="ResNet18, published (0.949)")
    axis.set_xscale("log")
    axis.set_xlabel("labelled training images")
    axis.set_ylabel("test accuracy")
    axis.set_title("Fashion-MNIST on 2 CPU cores: EfficientNet-Lite0 (64 px unless marked)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    rows = runs([Path(p) for p in sys.argv[1:]])
    # rows of earlier sessions whose run folders are gone stay in the table (a run measured again wins)
    done = {Path(r["run"]).name for r in rows}
    earlier = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else []
    rows += [{"channels_last": False, **r} for r in earlier if Path(r["run"]).name not in done]
    (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (HERE / "results.md").write_text(markdown(rows))
    plot(rows, HERE / "results.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
