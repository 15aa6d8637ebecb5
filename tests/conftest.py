import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import compose, offline_env  # noqa: E402


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


@pytest.fixture
def composed():
    return compose
