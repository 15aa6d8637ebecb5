import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ROOT, offline_env  # noqa: E402


@pytest.fixture
def env(tmp_path):
    return offline_env(tmp_path)


@pytest.fixture(autouse=True)
def _no_network_caches(tmp_path, monkeypatch):
    """In-process tests get the same offline, empty caches as the CLI tests."""
    for key, value in offline_env(tmp_path).items():
        if key in ("HF_HOME", "HF_HUB_OFFLINE", "TORCH_HOME", "NETRC", "WANDB_DIR", "WANDB_CONFIG_DIR"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


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


@pytest.fixture
def composed():
    return compose
