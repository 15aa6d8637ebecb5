"""Logger factories for what Lightning's loggers do not decide themselves."""

from __future__ import annotations

import csv
import hashlib
import netrc
import os
import sys
from urllib.parse import urlparse


def wandb_api_key_configured() -> bool:
    """Is a W&B API key available (WANDB_API_KEY, or a netrc entry for the W&B host)?"""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(mode: str | None = None) -> str | None:
    """The W&B mode: the config's, else WANDB_MODE, else online with an API key, else offline.

    `if_configured` (the default loggers' setting) is WANDB_MODE, else online with an API key,
    else None: W&B is left out of a run on a machine where nobody set it up (its start, its
    background service and its finish cost a short job seconds, and a folder nobody asked for).
    """
    if mode == "if_configured":
        return os.environ.get("WANDB_MODE") or ("online" if wandb_api_key_configured() else None)
    return mode or os.environ.get("WANDB_MODE") or ("online" if wandb_api_key_configured() else "offline")


def wandb_logger(save_dir: str, mode: str | None = None, log_model: bool | str = False, **kwargs):
    """Lightning's WandbLogger that works with no account.

    With no API key configured (and no WANDB_MODE), the run is written offline inside the run
    directory (`save_dir/wandb/offline-run-*`) and can be uploaded later with `wandb sync DIR`.
    Keys are never passed through the config: W&B reads them from the environment or netrc.
    Other keyword arguments go to WandbLogger / wandb.init (project, name, group, tags, ...).
    Returns None (no W&B logger) for `mode=if_configured` on a machine without W&B set up.
    """
    mode = wandb_mode(mode)
    if mode is None:
        return None
    from pytorch_lightning.loggers import WandbLogger

    # the same run directory is the same W&B run: a requeued or resumed job continues it
    kwargs.setdefault("id", stable_run_id(save_dir))
    if mode in ("offline", "dryrun", "disabled"):
        log_model = False  # nothing to upload to
    os.makedirs(save_dir, exist_ok=True)
    if "settings" not in kwargs:  # W&B's own start and end banners (~30 lines) bury xtune's last line,
        import wandb              # which says where the run went (xtune.tasks.train.final_line)

        kwargs["settings"] = wandb.Settings(silent=True)
    logger = WandbLogger(save_dir=save_dir, mode=mode, log_model=log_model, **kwargs)
    # WandbLogger always passes anonymous=None, which wandb 0.31 warns about on every run
    logger._wandb_init.pop("anonymous", None)
    return logger


def stable_run_id(run_dir: str) -> str:
    return hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:16]


def csv_logger(save_dir: str, name: str = "", version: str = "", **kwargs):
    """Lightning's CSVLogger writing RUN/metrics.csv, appending when the run resumes.

    Lightning's own deletes an existing metrics.csv (and warns about any non-empty folder); a
    resumed run keeps the history before its checkpoint (rows after it are dropped first by
    xtune.launch.resume.truncate_metrics).
    """
    from lightning_fabric.loggers.logger import rank_zero_experiment
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                    self.metrics_keys = list(next(csv.reader(handle), []))

    class ResumableCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return ResumableCSVLogger(save_dir=save_dir, name=name, version=version, **kwargs)


def finish_wandb(exit_code: int = 0) -> str | None:
    """End the active W&B run, so the next job of a multirun starts its own. Returns where the
    run is: its URL online, the `wandb sync` command offline, None without a run."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    offline = run.settings.mode in ("offline", "dryrun") or getattr(run, "offline", False)
    where = f"wandb sync {run.dir.rsplit('/files', 1)[0]}" if offline else run.url
    wandb.finish(exit_code=exit_code)
    return where
