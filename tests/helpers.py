"""Test helpers: run the real CLI, and make small real data sets in a temporary folder."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def offline_env(tmp_path: Path, **extra) -> dict:
    """An environment with no Hub, no W&B account and caches inside tmp_path."""
    env = dict(os.environ)
    for key in ("WANDB_API_KEY", "WANDB_MODE", "HF_ENDPOINT", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    env.update(
        HF_HUB_OFFLINE="1",  # and HF_HOME: the empty cache conftest.py sets up for the whole session
        TORCH_HOME=str(tmp_path / "torch_home"),
        NETRC=str(tmp_path / "no_netrc"),
        WANDB_DIR=str(tmp_path / "wandb_dir"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
        PYTHONUNBUFFERED="1",
        COLUMNS="120",
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


#: Modules every xtune command imports: imported once by a fork server, so each CLI run in the
#: tests costs its work, not ~8 s of importing torch, timm and Lightning again. Installed modules
#: only: Python 3.11's fork server does not get the tests' sys.path (a name it cannot import is
#: skipped without a word).
PRELOAD = ["torch", "torchvision", "timm", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf", "wandb",
           "sklearn.model_selection", "sklearn.datasets", "matplotlib.pyplot", "rich", "peft", "xtune.cli",
           "xtune.tasks.train", "xtune.tasks.evaluate", "xtune.data.datamodule", "xtune.models.module"]
#: environment variables read when those modules are imported: a run that changes one of them
#: gets a fresh Python instead of the fork server
IMPORT_TIME_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT")
_SERVER: dict = {}


def _run_in_child(argv: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """In a process forked from the server: become `argv` run from `cwd` with `env`, as a shell
    would start it (`python train.py ...` runs train.py as __main__; `xtune-x` its entry point)."""
    import gc
    import multiprocessing
    import runpy

    # The server's imports are millions of objects: left to the collector, this run's first full
    # collections would walk them all and dirty (copy-on-write) every page they sit on, ~0.7 s for
    # a run that stops at a config error (1.6 -> 0.9 s) and ~1 s for a short training run.
    # gc.freeze (O(1)) moves them to the permanent generation, as the Python docs advise after fork.
    gc.freeze()
    # A fresh `python` has not chosen a start method yet (fork on Linux before Python 3.14); this
    # process inherited "forkserver" from the server, and DataLoader workers started through a
    # fork server unpickle their dataset in a new Python that imports everything again: ~12 s for
    # each loader's workers, instead of ~0.1 s.
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # what a new interpreter puts first on sys.path: the script's folder (for `python x.py`), then PYTHONPATH
    script = [os.path.dirname(os.path.abspath(argv[1]))] if argv[0] in ("python", "python3", sys.executable) else []
    sys.path[:0] = script + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    code = 0
    try:
        if argv[0] in ("python", "python3", sys.executable):
            sys.argv = argv[1:]
            runpy.run_path(argv[1], run_name="__main__")
        else:
            from importlib.metadata import entry_points

            sys.argv = argv
            (entry,) = entry_points(group="console_scripts", name=argv[0])
            returned = entry.load()()  # the console script does sys.exit(main())
            code = returned if isinstance(returned, int) else (0 if returned is None else 1)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - what the interpreter would print, and its exit code
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _server():
    import multiprocessing

    if "context" not in _SERVER:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _SERVER["context"] = context
        _SERVER["env"] = {k: os.environ.get(k) for k in IMPORT_TIME_ENV}  # the server starts with these
    return _SERVER["context"]


class Started:
    """A command started through the fork server, with the part of subprocess.Popen's interface
    the tests use (pid, send_signal, poll, communicate, returncode)."""

    def __init__(self, process, argv: list[str], out: Path, err: Path):
        self.process, self.args, self._out, self._err = process, argv, out, err
        self.pid = process.pid

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def poll(self) -> int | None:
        return self.process.exitcode

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        output = self._out.read_text(), self._err.read_text()
        self._out.unlink()
        self._err.unlink()
        return output

    def kill(self) -> None:
        self.process.kill()
        self.process.join()


def start(argv: list[str], *, tmp_path: Path, env: dict | None = None, cwd: Path = ROOT,
          fresh: bool = False) -> "Started | subprocess.Popen":
    """Start a command line (`python train.py ...`, `xtune-eval ...`) from `cwd`, as a user would.

    By default through the fork server (same argv, working directory and environment; the
    modules are imported already); `fresh=True`, or an environment that changes what those
    imports read, starts a new Python.
    """
    env = env or offline_env(tmp_path)
    argv = [sys.executable if a in ("python", "python3") else a for a in argv]
    context = _server()
    if fresh or any(env.get(k) != v for k, v in _SERVER["env"].items()):
        command = argv if argv[0] == sys.executable else [str(Path(sys.executable).parent / argv[0]), *argv[1:]]
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import uuid

    name = uuid.uuid4().hex[:8]
    out, err = tmp_path / f".stdout-{name}", tmp_path / f".stderr-{name}"
    process = context.Process(target=_run_in_child, args=(argv, str(cwd), env, str(out), str(err)))
    process.start()
    return Started(process, argv, out, err)


def run(argv: list[str], *, tmp_path: Path, env: dict | None = None, cwd: Path = ROOT, timeout: int = 600,
        fresh: bool = False) -> subprocess.CompletedProcess:
    """Run a command line to its end (see `start`)."""
    process = start(argv, tmp_path=tmp_path, env=env, cwd=cwd, fresh=fresh)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_cli(script: str, *overrides: str, tmp_path: Path, env: dict | None = None, timeout: int = 600,
            cwd: Path = ROOT, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python <script> overrides...` (from the repository root unless `cwd` is given)."""
    return run(["python", str(Path(cwd) / script) if cwd == ROOT else script, *overrides],
               tmp_path=tmp_path, env=env, cwd=cwd, timeout=timeout, fresh=fresh)


#: the run every resumed or preempted run must reproduce (conftest.reference_run: resume and cluster tests)
REFERENCE = ["experiment=quickstart", "logger=csv", "trainer.max_epochs=3", "data.batch_size=16"]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def write_image_folder(root: Path, classes=("red", "green", "blue"), per_class: int = 12,
                       size: int = 24, seed: int = 0) -> Path:
    """PNG images whose class is their dominant colour channel (learnable in one epoch)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            pixels[..., index % 3] = rng.integers(160, 255, size=(size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def write_digit_scans(root: Path, per_class: int = 6, start: int = 1500) -> Path:
    """Class folders 0-9 of PNG scans: scikit-learn digits the quickstart split never used for
    training are not guaranteed, so take them from the end (a folder to evaluate a digits model on).
    Upscaled 8 -> 32 px bilinearly, as the digits pipeline resizes them for test_resnet: blocky
    nearest-neighbour scans were another distribution, on which the quickstart model's score moved
    with the CPU's floating-point kernels (0.76 on an AMD EPYC, >= 0.8 where the test was written)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {label: 0 for label in range(10)}
    for index in range(start, len(digits.target)):
        label = int(digits.target[index])
        if counts[label] >= per_class:
            continue
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(folder / f"{index}.png")
        counts[label] += 1
    return root


def _idx_bytes(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_idx(root: Path, compress: bool = False, train_size: int = 1400) -> Path:
    """The four MNIST IDX files, made of scikit-learn's real digits at MNIST's 28x28."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images / 16.0 * 255.0, np.ones((3, 3)))  # 8x8 -> 24x24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).round().astype(np.uint8)  # -> 28x28
    labels = digits.target.astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": images[:train_size],
        "train-labels-idx1-ubyte": labels[:train_size],
        "t10k-images-idx3-ubyte": images[train_size:],
        "t10k-labels-idx1-ubyte": labels[train_size:],
    }
    for name, array in files.items():
        data = _idx_bytes(array)
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return root


def compose(config_name: str = "train", overrides=(), output_dir: Path | None = None):
    """Compose the real configs as the CLI does, with Hydra's runtime values set."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from xtune.config import CONFIG_DIR
    from xtune.config.resolvers import register

    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or ROOT / "logs" / "unused")
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
