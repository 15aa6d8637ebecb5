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
    callbacks = [watch, *extra_callbacks]
    # Collectives (what SPMD inserts on several devices) are counted from XLA's dump of the compiled
    # programs: torch_xla's metrics do not see them. Only where the runtime has not started yet.
    collectives = None
    if int(cfg.hardware.get("xla_cpu_devices") or 1) > 1 and check.get("count_collectives", True):
        from xtune.hardware.xla_collectives import CollectiveWatch, dump_to

        folder = Path(cfg.paths.output_dir) / "xla_dump"
        if dump_to(folder):
            collectives = CollectiveWatch(folder)
            callbacks.append(collectives)
    try:
        summary = run_training(cfg, extra_callbacks=callbacks)
    finally:
        if collectives is not None:
            collectives.remove_dump()  # thousands of files; the counts are in the report
    hardware = summary.get("hardware", {})
    report = {
        "note": "XLA on CPU (PJRT_DEVICE=CPU), not a TPU: compile and transfer counts carry over, speed does not",
        "model": cfg.model.name,
        "precision": summary.get("precision"),
        "input_size": summary.get("data", {}).get("data_config", {}).get("input_size"),
        "strategy": hardware.get("strategy"),
        "devices": hardware.get("devices"),
        "batch_size": int(cfg.data.batch_size),
        **watch.report(),
        **(collectives.report() if collectives is not None else {
            "collectives_per_step": {} if hardware.get("devices") == 1 else None,
            "collectives_source": "one device: none" if hardware.get("devices") == 1 else "not counted"}),
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

    table = Table(title=f"XLA readiness of {report['model']} on {report['devices']} XLA:CPU device(s), "
                        f"{report['strategy']} ({report['note']})")
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
        ("collectives per training step", _collectives(report["collectives_per_step"])),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    rich.print(table)
    verdict = "READY" if not report["recompiles_after_warmup"] else "NOT READY"
    rich.print(f"[bold]{verdict}[/bold]: {report['recompiles_after_warmup']} recompilations after warm-up")


def _collectives(counts: dict | None) -> str:
    if counts is None:
        return "not counted"
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "none"
