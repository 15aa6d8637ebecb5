"""Command-line entry points: `python train.py`, `python eval.py`, `xtune-*` console scripts.

This module imports no torch: Hydra composes, prints (`--cfg job`) and explains (`--help`) the
config in well under a second; the heavy imports happen inside the tasks.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
from pathlib import Path

from xtune.config import CONFIG_DIR
from xtune.errors import XtuneError

USAGE = {
    "train": "python train.py [group=option ...] [key=value ...]      (or xtune-train)",
    "eval": "python eval.py ckpt_path=RUN/checkpoints/best.ckpt [key=value ...]      (or xtune-eval)",
    "prefetch": "xtune-prefetch [group=option ...] [key=value ...]      (-m model=a,b for several)",
    "export": "xtune-export ckpt_path=RUN/checkpoints/best.ckpt [export_dir=DIR]",
    "bench": "python bench.py [group=option ...] [bench.batch_sizes=[..] bench.precisions=[..] ...]",
    "xla_check": "xtune-xla-check [group=option ...] [key=value ...]      (XLA on CPU: needs the [tpu] extra)",
    "convert": "xtune-convert model.weights=FILE model.name=TIMM_NAME [out_dir=DIR] [mean=[..] std=[..] ...]",
}


#: command-line choices that need an optional extra: (choice prefix, module it needs, extra)
EXTRAS = (
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher=ray", "hydra_plugins.hydra_ray_launcher", "ray"),
    ("hparams_search=optuna", "optuna", "optuna"),
    ("finetune=lora", "peft", "lora"),
    ("logger=tensorboard", "tensorboard", "tensorboard"),
    ("logger=all", "tensorboard", "tensorboard"),
)


def missing_extra(args: list[str], find_spec=None) -> str | None:
    """One line naming the extra to install when a chosen launcher or search is not installed
    (Hydra would otherwise report a config it cannot find, or an import deep in a sweeper)."""
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    for arg in args:
        for prefix, module, extra in EXTRAS:
            if arg.startswith(prefix) and find_spec(module) is None:
                return f"{arg} needs the [{extra}] extra: pip install -e \".[{extra}]\" (or pip install 'xtune[{extra}]')"
    return None


def missing_cluster(args: list[str], which=None) -> str | None:
    """A cluster launcher where there is no cluster: SLURM not installed (submitit would raise
    'Could not detect srun'), or ray_tpu without a Ray cluster (a local Ray has no TPU chips, so
    its jobs would wait for them forever)."""
    which = which or shutil.which
    if any(a.startswith("hydra/launcher=slurm") for a in args) and which("sbatch") is None:
        return ("hydra/launcher=slurm needs SLURM, but this machine has no sbatch on its PATH: run the command on "
                "the cluster's login node, or drop hydra/launcher=slurm to run the jobs here one after another")
    if "hydra/launcher=ray_tpu" in args and not os.environ.get("RAY_ADDRESS"):
        return ("hydra/launcher=ray_tpu asks a Ray cluster of TPU VMs for {TPU: 4} per job, but RAY_ADDRESS is not set "
                "and a local Ray has no TPU chips: set RAY_ADDRESS=<head>:6379 (configs/hydra/launcher/ray.yaml), "
                "or use hydra/launcher=ray")
    return None


def argument_conflict(args: list[str]) -> str | None:
    """Hydra answers `-m ... --cfg job` with a ValueError traceback; say it in one line."""
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    if flags & {"-m", "--multirun"} and flags & {"--cfg", "-c", "--info", "-i"}:
        return ("-m (a sweep) cannot be combined with --cfg/--info: drop -m and give one value per key "
                "to print one job's config")
    return None


def _discard_if_empty(run_dir: str | None, task_name: str) -> None:
    """Remove a run directory that holds nothing but Hydra's bookkeeping (an early error)."""
    if not run_dir:
        return
    path = Path(run_dir)
    bookkeeping = {".hydra", f"{task_name}.log"}
    if path.is_dir() and {p.name for p in path.iterdir()} <= bookkeeping:
        shutil.rmtree(path, ignore_errors=True)


def _record_failure(run_dir: str | None, error: BaseException) -> None:
    """A failed sweep job leaves a summary.json saying why (the sweep summary reads it)."""
    from xtune.report import write_json

    if not run_dir:
        return
    path = Path(run_dir) / "summary.json"
    line = error.one_line() if isinstance(error, XtuneError) else f"{type(error).__name__}: {error}"
    previous = {}
    if path.is_file():
        import json

        previous = json.loads(path.read_text())
    write_json(path, {**previous, "status": "failed", "error": " ".join(line.split())[:1000]})


#: OS errors that are the machine's state, not a bug: one line, exit 2 (see explain.os_error_line)
USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _guarded(task):
    """Run a task; an XtuneError becomes one line on stderr and exit code 2.

    In a multirun a failing job is recorded (its summary.json says why, the traceback goes to
    its log) and returns None, so the remaining jobs run and sweepers see a failed trial. An
    interruption (SIGTERM, preemption) ends the whole process either way. The loggers are
    finished before the error is printed, so the error is the last line on the screen.
    """

    @functools.wraps(task)
    def run(cfg):
        import logging

        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from xtune.config.explain import os_error_line
        from xtune.errors import XtuneInterrupted
        from xtune.loggers import finish_wandb

        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        try:
            return task(cfg)
        except Exception as error:
            finish_wandb(1)
            if isinstance(error, OSError) and error.errno in USER_OS_ERRORS and error.filename:
                error = XtuneError(os_error_line(error))
            if multirun and not isinstance(error, XtuneInterrupted):
                logging.getLogger("xtune").exception("job %s failed", hydra_cfg.job.get("num"))
                _record_failure(hydra_cfg.runtime.output_dir, error)
                print(f"error: job {hydra_cfg.job.get('num')} failed: "
                      f"{error.one_line() if isinstance(error, XtuneError) else repr(error)[:300]}",
                      file=sys.stderr, flush=True)
                return None
            if not isinstance(error, XtuneError):
                raise
            if not multirun:
                _discard_if_empty(hydra_cfg.runtime.output_dir, cfg.get("task_name", ""))
            print(f"error: {error.one_line()}", file=sys.stderr, flush=True)
            sys.exit(error.exit_code)
        finally:
            finish_wandb(0)  # no-op when already finished

    return run


def _keys_of(path: Path) -> list[str]:
    """`key  # comment` lines of a flat YAML config, for --help (no YAML parser needed)."""
    lines = []
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-", "_", "defaults")) and ":" in line:
            key, _, rest = line.partition(":")
            comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
            lines.append(f"  model.{key:<16} {comment}")
    return lines


def fast_help(config_name: str) -> str:
    """--help without composing: Hydra's own help composes the config once per group (~1 s).
    The one help text of every command (configs/hydra/default.yaml keeps none)."""
    groups = []
    for group in sorted(os.listdir(CONFIG_DIR)):
        folder = Path(CONFIG_DIR) / group
        options = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        if options and group != "hydra":
            groups.append(f"  {group}: {', '.join(options)}")
    primary = (Path(CONFIG_DIR) / f"{config_name}.yaml").read_text()
    return "\n".join([
        f"xtune {config_name}: fine-tune pretrained timm image backbones with PyTorch Lightning + Hydra.",
        "",
        f"Usage: {USAGE[config_name]}",
        "",
        "Examples (README.md has the tour):",
        "  python train.py experiment=quickstart                 # offline, CPU, a minute or two",
        "  python train.py model=convnext data=imagefolder data.root=/data/pets",
        "  python eval.py ckpt_path=logs/train/runs/RUN/checkpoints/best.ckpt",
        "  python train.py -m model=resnet,vit seed=1,2,3         # a sweep",
        "",
        "Config groups (group=option, files in configs/<group>/<option>.yaml):",
        *groups,
        "",
        "Model keys (configs/model/resnet.yaml; every model option starts from it):",
        *_keys_of(Path(CONFIG_DIR) / "model" / "resnet.yaml"),
        "",
        f"configs/{config_name}.yaml:",
        *("  " + line for line in primary.rstrip().splitlines()),
        "",
        "Print the composed config with --cfg job (add overrides to see their effect);",
        "Hydra's own options: --hydra-help. Docs: README.md.",
    ])


def _main(config_name: str, task_path: str):
    module_name, function_name = task_path.rsplit(":", 1)

    def main() -> None:
        args = sys.argv[1:]
        if "--help" in args or "-h" in args:
            print(fast_help(config_name))
            return

        problem = argument_conflict(args) or missing_extra(args) or missing_cluster(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)

        import hydra

        from xtune.config.explain import explain
        from xtune.config.resolvers import register

        register()

        @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
        @_guarded
        def task(cfg):
            import importlib

            return getattr(importlib.import_module(module_name), function_name)(cfg)

        # Hydra prints its errors as a trimmed traceback and exits 1; with HYDRA_FULL_ERROR it
        # raises them, and those a user caused become one line here.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            task()
        except XtuneError as error:  # raised outside a job: by a sweeper
            print(f"error: {error.one_line()}", file=sys.stderr, flush=True)
            sys.exit(error.exit_code)
        except Exception as error:
            line = explain(error, args, CONFIG_DIR, config_name)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr, flush=True)
            sys.exit(2)

    main.__name__ = main.__qualname__ = config_name
    return main


train = _main("train", "xtune.tasks.train:train")
evaluate = _main("eval", "xtune.tasks.evaluate:evaluate")
prefetch = _main("prefetch", "xtune.tasks.prefetch:prefetch")
xla_check = _main("xla_check", "xtune.tasks.xla_check:xla_check")
bench = _main("bench", "xtune.tasks.bench:bench")
export = _main("export", "xtune.tasks.export:export")
convert = _main("convert", "xtune.tasks.convert:convert")
