"""Sweep summaries: one table per multirun, whatever launched its jobs.

A Hydra callback (configs/hydra/default.yaml) that, when a multirun ends, reads every job's
`summary.json` and `.hydra/overrides.yaml` from the sweep directory - so it works the same for
local jobs, SLURM jobs (submitit) and Ray jobs - and writes `sweep_summary.csv`,
`sweep_summary.md` and `sweep_summary.png` there: the overrides that differ between jobs, the
final metrics, wall time, status and the error line of failed jobs.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("xtune")

METRICS = ("test/acc", "val/acc_best", "test/loss")


def job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / "summary.json").is_file())]
    return sorted(dirs, key=lambda p: (len(p.name), p.name))


def collect(sweep_dir: Path, optimized_metric: str | None) -> list[dict]:
    rows = []
    for folder in job_dirs(sweep_dir):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        summary_file = folder / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"status": "missing"}
        metrics = summary.get("metrics", {})
        row = {"job": folder.name, "overrides": list(overrides or []), "status": summary.get("status", "unknown")}
        if optimized_metric:
            row[optimized_metric] = metrics.get(optimized_metric)
        for name in METRICS:
            row.setdefault(name, metrics.get(name))
        row["wall_time_s"] = summary.get("wall_time_s")
        row["error"] = summary.get("error", "")
        rows.append(row)
    # overrides every job shares say nothing about the differences (a single job keeps its own)
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in common)
    return rows


def write(sweep_dir: Path, rows: list[dict], optimized_metric: str | None) -> str:
    columns = list(rows[0]) if rows else ["job"]
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key in columns:
            value = row[key]
            if isinstance(value, float):
                cells.append(f"{value:.1f}" if key == "wall_time_s" else f"{value:.4f}")
            else:
                cells.append(str(value if value is not None else ""))
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    completed = sum(1 for r in rows if r["status"] == "completed")
    lines += ["", f"{completed} of {len(rows)} jobs completed."]
    if optimized_metric:
        done = [r for r in rows if isinstance(r.get(optimized_metric), (int, float))]
        if done:
            best = max(done, key=lambda r: r[optimized_metric])
            lines.append(f"Best {optimized_metric}: {best[optimized_metric]:.4f} (job {best['job']}: {best['overrides']})")
    text = "\n".join(lines) + "\n"
    (sweep_dir / "sweep_summary.md").write_text(text)
    _plot(rows, optimized_metric, sweep_dir / "sweep_summary.png")
    return text


def _plot(rows: list[dict], metric: str | None, path: Path) -> None:
    if not rows or not metric:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['job']}: {r['overrides']}"[:40] for r in rows]
    values = [r.get(metric) if isinstance(r.get(metric), (int, float)) else 0.0 for r in rows]
    colors = ["tab:blue" if r["status"] == "completed" else "tab:red" for r in rows]
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    axis.barh(range(len(rows)), values, color=colors)
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels(labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel(f"{metric} (red: failed)")
    axis.set_title("Sweep summary")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


class SweepSummary(Callback):
    """Hydra callback: the sweep summary at the end of every multirun.

    With `fail_on_job_error` (default) the process exits with code 1 when a job failed, so a
    script notices; hyperparameter searches turn it off (a failed trial is part of a search).
    Jobs marked "interrupted" (killed, then continued by a resumed search) never count as failed.
    """

    def __init__(self, fail_on_job_error: bool = True):
        self.fail_on_job_error = fail_on_job_error

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        metric = config.get("optimized_metric")
        rows = collect(sweep_dir, metric)
        if not rows:
            return
        print(write(sweep_dir, rows, metric), flush=True)
        failed = [r for r in rows if r["status"] not in ("completed", "interrupted")]
        if failed and self.fail_on_job_error:
            print(f"error: {len(failed)} of {len(rows)} jobs failed (first: job {failed[0]['job']}: "
                  f"{failed[0]['error'] or failed[0]['status']}); see {sweep_dir}/sweep_summary.md",
                  file=sys.stderr, flush=True)
            sys.exit(1)
