"""Table and plot of the fine-tuning strategy study from its sweep directory.

    python experiments/finetune_strategies/make_table.py logs/train/multiruns/<date>_<time>

For each strategy the learning rate with the best validation accuracy is kept (model selection
on val, never on test); its test accuracy, trainable parameters, training images/s and memory
are reported. Writes results.md, results.json and results.png beside this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["linear_probe", "lora", "freeze_unfreeze", "layer_decay", "full"]


def load(sweep: Path) -> list[dict]:
    rows = []
    for path in sorted(sweep.glob("*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("status") != "completed":
            continue
        config = (path.parent / "config.yaml").read_text()
        lr = next(float(line.split(":")[1]) for line in config.splitlines() if line.strip().startswith("lr:"))
        rows.append({
            "strategy": s["finetune"]["strategy"], "lr": lr,
            "val_acc_best": s["metrics"]["val/acc_best"], "test_acc": s["metrics"]["test/acc"],
            "trainable": s["finetune"]["trainable"], "total": s["finetune"]["total"],
            "images_per_s": s["throughput"]["train_images_per_second"],
            "training_state_mb": s["memory"]["training_state_mb"],
            "peak_rss_mb": s["memory"]["peak_process_rss_mb"], "wall_s": s["wall_time_s"],
        })
    return rows


def best_per_strategy(rows: list[dict]) -> list[dict]:
    best = {}
    for row in rows:
        current = best.get(row["strategy"])
        if current is None or (row["val_acc_best"], -row["lr"]) > (current["val_acc_best"], -current["lr"]):
            best[row["strategy"]] = row
    return [best[name] for name in ORDER if name in best]


def markdown(best: list[dict], rows: list[dict]) -> str:
    lines = ["| strategy | best lr (on val) | val acc | test acc | trainable params | share | train img/s | training state MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in best:
        lines.append(f"| {r['strategy']} | {r['lr']:g} | {r['val_acc_best']:.3f} | {r['test_acc']:.3f} | "
                     f"{r['trainable']:,} | {100 * r['trainable'] / r['total']:.1f} % | {r['images_per_s']:.0f} | "
                     f"{r['training_state_mb']} |")
    lines += ["", "All runs (test accuracy by learning rate):", "",
              "| strategy | " + " | ".join(f"lr {lr:g}" for lr in sorted({r['lr'] for r in rows})) + " |",
              "|---|" + "---:|" * len({r['lr'] for r in rows})]
    for name in ORDER:
        cells = []
        for lr in sorted({r["lr"] for r in rows}):
            match = [r for r in rows if r["strategy"] == name and r["lr"] == lr]
            cells.append(f"{match[0]['test_acc']:.3f}" if match else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(best: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for r in best:
        axis.scatter(r["trainable"], r["test_acc"], s=60)
        axis.annotate(r["strategy"], (r["trainable"], r["test_acc"]), textcoords="offset points", xytext=(6, 4))
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters")
    axis.set_ylabel("test accuracy (digits 5-9)")
    axis.set_title("Accuracy against trainable parameters, per strategy")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(sweep: str) -> None:
    rows = load(Path(sweep))
    best = best_per_strategy(rows)
    (HERE / "results.json").write_text(json.dumps({"best": best, "runs": rows}, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(best, rows))
    plot(best, HERE / "results.png")
    print(markdown(best, rows))


if __name__ == "__main__":
    main(sys.argv[1])
