import os

import pytest

NOTE = ("xtune XLA tests: XLA on CPU (PJRT_DEVICE=CPU) through Lightning's real XLA path - not a TPU. "
        "Compile and transfer counts carry over to TPUs; speed does not.")


def pytest_report_header(config):
    return NOTE


@pytest.fixture(autouse=True)
def _xla_on_cpu(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", os.environ.get("PJRT_DEVICE", "CPU"))
