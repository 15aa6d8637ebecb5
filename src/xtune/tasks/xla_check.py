"""xtune-xla-check: TPU readiness of a config, measured on XLA:CPU before paying for a TPU."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from xtune.errors import XtuneError
from xtune.report import write_json

log = logging.getLogger("xtune")


class XlaNotReady(XtuneError):
    """The steady state recompiles: the config is not ready for a TPU."""

    exit_code = 1


def xla_check(cfg: DictConfig, extra_callbacks=()) -> dict:
    check = cfg.xla_check
    with open_dict(cfg):
        cfg.trainer.max_epochs = int(check.epochs)
        cfg.trainer.limit_train_batches = int(check.train_batches)
        cfg.trainer.limit_val_batches = int(check.val_batches)

    from xtune.hardware.xla import CompileWatch
    from xtune.tasks.train import run_training

    if int(check.epochs) < 3:
        from xtune.errors import XtuneConfigError

        raise XtuneConfigError(
            f"xla_check.epochs={check.epochs}: at least 3 epochs are needed for graphs to settle (4 is the default)"
        )
    watch = CompileWatch(warmup_epochs=1)
    summary = run_training(cfg, extra_callbacks=[watch, *extra_callbacks])
    report = {
        "note": "XLA on CPU (PJRT_DEVICE=CPU), not a TPU: compile and transfer counts carry over, speed does not",
        "model": cfg.model.name,
        "precision": summary.get("precision"),
        "input_size": summary.get("data", {}).get("data_config", {}).get("input_size"),
        **watch.report(),
    }
    write_json(Path(cfg.paths.output_dir) / "xla_check.json", report)
    _print(report)
    if report["recompiles_after_warmup"]:
        raise XlaNotReady(
            f"not TPU-ready: {report['recompiles_after_warmup']} XLA recompilations after warm-up "
            f"(step compiles per epoch {report['step_compiles_per_epoch']}, epoch-boundary compiles "
            f"{report['boundary_compiles_per_epoch']}); a shape or Python value changes between steps. Rerun with PT_XLA_DEBUG_LEVEL=2 to see why each graph compiled; "
            f"report in {cfg.paths.output_dir}/xla_check.json"
        )
    return report


def _print(report: dict) -> None:
    import rich
    from rich.table import Table

    table = Table(title=f"XLA readiness of {report['model']} ({report['note']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("graphs compiled", report["graphs_compiled"]),
        ("  in steps, per epoch", " ".join(map(str, report["step_compiles_per_epoch"]))),
        ("  at epoch boundaries, per epoch", " ".join(map(str, report["boundary_compiles_per_epoch"]))),
        ("recompiles after warm-up", report["recompiles_after_warmup"]),
        ("steady-state steps", report["steady_state_steps"]),
        ("host transfers per training step", report["host_transfers_per_step"]),
        ("scalar reads (.item()) per training step", report["item_calls_per_step"]),
        ("host transfers per epoch, outside training steps",
         report["host_transfers_per_epoch_outside_training_steps"]),
        ("ops that fell back to CPU", ", ".join(report["fallback_ops"]) or "none"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    rich.print(table)
    verdict = "READY" if not report["recompiles_after_warmup"] else "NOT READY"
    rich.print(f"[bold]{verdict}[/bold]: {report['recompiles_after_warmup']} recompilations after warm-up")
