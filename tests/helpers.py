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
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        TORCH_HOME=str(tmp_path / "torch_home"),
        NETRC=str(tmp_path / "no_netrc"),
        WANDB_DIR=str(tmp_path / "wandb_dir"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
        PYTHONUNBUFFERED="1",
        COLUMNS="120",
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_cli(script: str, *overrides: str, tmp_path: Path, env: dict | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python <script> overrides...` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=ROOT,
        env=env or offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
