"""Where a run continues from: `resume=auto` (default) or `resume=never`.

A run directory is stable across a requeue (hydra/launcher=slurm keeps the sweep's job folder;
sbatch jobs are named after SLURM_JOB_ID) and across a re-run of the same command with a
`run_name`. With resume=auto a run directory that holds `checkpoints/last.ckpt` (or a Lightning
`hpc_ckpt_*.ckpt`) continues from it; one that holds a completed run returns that run's result.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from xtune.errors import XtuneConfigError

log = logging.getLogger("xtune")
POLICIES = ("auto", "never")


def resume_point(cfg: DictConfig, run_dir: Path) -> tuple[str | None, dict | None]:
    """(checkpoint to continue from, the summary of a completed run), either may be None."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path), None
    policy = str(cfg.get("resume", "auto"))
    if policy not in POLICIES:
        raise XtuneConfigError(f"resume={policy}: expected one of {', '.join(POLICIES)}")
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    candidates = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if policy == "never":
        if summary or candidates:
            raise XtuneConfigError(
                f"run directory {run_dir} already holds a run; choose another run_name (or hydra.run.dir), "
                "or resume=auto to continue it"
            )
        return None, None
    if summary and summary.get("status") == "completed":
        stored = (summary.get("model") or {}).get("name")
        if stored and stored != cfg.model.name:
            raise XtuneConfigError(
                f"run directory {run_dir} holds a completed run of model.name={stored}, not {cfg.model.name}; "
                "choose another run_name"
            )
        return None, summary
    if candidates:
        latest = max(candidates, key=lambda p: p.stat().st_mtime)
        log.info("resuming from %s (resume=auto)", latest)
        return str(latest), None
    return None, None


def truncate_metrics(csv_path: Path, global_step: int) -> None:
    """Drop rows a killed attempt logged after the checkpoint it resumes from (step >= global_step)."""
    if not csv_path.is_file():
        return
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if row.get("step") in (None, "") or int(float(row["step"])) < global_step]
    if len(kept) == len(rows):
        return
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, csv_path)
