"""--help and --cfg job answer without importing torch (they must stay instant)."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

PROBE = (
    "import atexit, runpy, sys; sys.argv = [{script!r}] + {args!r}\n"
    "def report():\n"
    "    heavy = sorted(m for m in ('torch', 'pytorch_lightning', 'timm', 'wandb') if m in sys.modules)\n"
    "    print('HEAVY', heavy)\n"
    "atexit.register(report)\n"
    "runpy.run_path({script!r}, run_name='__main__')\n"
)


@pytest.mark.parametrize("script,args,code", [
    ("train.py", ["--help"], 0),
    ("train.py", ["--cfg", "job"], 0),
    ("train.py", ["experiment=quickstart", "--cfg", "job"], 0),
    ("eval.py", ["--help"], 0),
    ("eval.py", ["ckpt_path=x.ckpt", "--cfg", "job"], 0),
    ("train.py", ["model=vit", "--help"], 0),
    # refused by validation, which reads the data source's signature (xtune.data.sources): it
    # once imported Lightning through xtune.data, before import_framework could import it fast
    ("train.py", ["data=imagefolder"], 2),
    ("bench.py", ["bench.mode=grid"], 2),
])
def test_no_heavy_imports(script, args, code, env, tmp_path):
    # a refused run has started its run directory: keep it out of the repository's logs/
    probe = PROBE.format(script=str(ROOT / script), args=[*args, f"paths.log_dir={tmp_path}"] if code else args)
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == code, result.stderr
    assert "HEAVY []" in result.stdout


def test_help_lists_groups_and_options(env):
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for line in ("model: convnext, efficientnet, mobilenet, resnet, tiny, vit",
                 "data: cifar10, digits, fashion_mnist, imagefolder, mnist, synthetic",
                 "experiment=quickstart"):
        assert line in result.stdout


def test_cfg_job_prints_the_composed_config(env):
    result = subprocess.run([sys.executable, "train.py", "experiment=quickstart", "--cfg", "job"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "name: test_resnet" in result.stdout and "pretrained: false" in result.stdout


@pytest.mark.parametrize("script", ["xtune-train", "xtune-eval", "xtune-prefetch"])
def test_console_scripts_are_installed(script, env):
    import shutil

    # the environment running the tests: the one whose scripts must be there
    path = str(Path(sys.executable).parent / script)
    assert shutil.which(path), f"{script} is not installed in {Path(sys.executable).parent}"
    result = subprocess.run([path, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Config groups" in result.stdout


@pytest.mark.parametrize("choice, extra", [("hparams_search=optuna", "optuna"),
                                           ("hydra/launcher=slurm_gpu", "slurm"),
                                           ("hydra/launcher=ray_tpu", "ray")])
def test_a_launcher_or_search_without_its_extra_names_the_install(choice, extra, env):
    module = {"optuna": "optuna", "slurm": "hydra_plugins.hydra_submitit_launcher",
              "ray": "hydra_plugins.hydra_ray_launcher"}[extra]
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = ['train.py', '-m', {choice!r}]; "
            "from xtune.cli import train; train()")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'error: {choice} needs the [{extra}] extra: pip install -e ".[{extra}]" (or pip install \'xtune[{extra}]\')']


def test_a_sweep_with_cfg_is_one_line_not_a_traceback(env):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "model=resnet,vit", "--cfg", "job"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: -m (a sweep) cannot be combined with --cfg/--info: drop -m and give one value per key "
        "to print one job's config"]
