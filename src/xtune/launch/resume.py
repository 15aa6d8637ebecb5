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
from pathlib import Path

from omegaconf import DictConfig

from xtune.atomic import atomic_path
from xtune.errors import XtuneConfigError

log = logging.getLogger("xtune")
POLICIES = ("auto", "never")


#: settings that may change when a run continues: its length, its name (the directory is its
#: identity: a requeued sweep job re-resolves the default run_name, the time), where and how it
#: logs, how data is loaded. Anything else changed means other training: refused, so a run never
#: mixes two.
MAY_CHANGE = ("run_name", "trainer.max_epochs", "trainer.max_steps", "trainer.min_epochs", "ckpt_path", "resume", "tags",
              "test", "export", "export_dir", "optimized_metric", "logger", "paths", "callbacks.rich_progress_bar",
              "callbacks.model_summary", "trainer.enable_progress_bar", "trainer.num_sanity_val_steps",
              "trainer.log_every_n_steps", "trainer.profiler", "data.num_workers", "data.pin_memory",
              "data.persistent_workers", "data.eval_batch_size")
BUDGET = ("trainer.max_epochs", "trainer.max_steps")


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def config_changes(stored: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, stored value, current value) for every setting that differs, in key order."""
    old, new = _flatten(stored), _flatten(current)
    missing = object()
    return [(k, old.get(k, missing), new.get(k, missing)) for k in sorted(set(old) | set(new))
            if old.get(k, missing) != new.get(k, missing)]


def _show(value) -> str:
    return "(absent)" if not isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)


def _hydra_record(run_dir: Path, accepted: bool) -> None:
    """Hydra rewrites RUN/.hydra/*.yaml before xtune sees the config. Keep a copy of the record of
    the attempt that owns the run; put it back when an attempt is refused."""
    import shutil

    record, kept = run_dir / ".hydra", run_dir / ".hydra" / "accepted"
    if accepted and record.is_dir():
        kept.mkdir(exist_ok=True)
        for file in record.glob("*.yaml"):
            shutil.copy2(file, kept / file.name)
    elif not accepted and kept.is_dir():
        for file in kept.glob("*.yaml"):
            shutil.copy2(file, record / file.name)


def resume_point(cfg: DictConfig, run_dir: Path, current: dict | None = None) -> tuple[str | None, dict | None]:
    """(checkpoint to continue from, the summary of a completed run), either may be None.

    `current` is this attempt's resolved config (as saved to RUN/config.yaml): compared with the
    stored one, so a re-run with other settings is refused instead of silently mixing two runs.
    """
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
            _hydra_record(run_dir, accepted=False)
            raise XtuneConfigError(
                f"run directory {run_dir} already holds a run; choose another run_name (or hydra.run.dir), "
                "or resume=auto to continue it"
            )
        _hydra_record(run_dir, accepted=True)
        return None, None
    stored_file = run_dir / "config.yaml"
    changes = []
    completed = bool(summary and summary.get("status") == "completed")
    if current is not None and stored_file.is_file() and (completed or candidates):
        import yaml

        changes = config_changes(yaml.safe_load(stored_file.read_text()) or {}, current)
        refused = [c for c in changes if not _may_change(c[0])]
        if refused:
            _hydra_record(run_dir, accepted=False)
            shown = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, a, b in refused[:4])
            more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
            raise XtuneConfigError(
                f"run directory {run_dir} holds a run with other settings ({shown}{more}); to train these "
                "settings as a new run pass another run_name, or drop those overrides to continue that run"
            )
    _hydra_record(run_dir, accepted=True)
    budget_changed = any(k in BUDGET for k, _, _ in changes)
    if completed and not (budget_changed and candidates):
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
    """Drop rows a killed attempt logged after the checkpoint it resumes from (step >= global_step,
    everything for a fresh start), and any row a crash (a full disk) left unreadable."""
    if not csv_path.is_file():
        return
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], list(reader)

    def keep(row) -> bool:
        if None in row or None in row.values():  # a partly written row
            return False
        try:
            return row.get("step") in ("",) or int(float(row["step"])) < global_step
        except (TypeError, ValueError):
            return False

    kept = [row for row in rows if keep(row)]
    if len(kept) == len(rows):
        return
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
