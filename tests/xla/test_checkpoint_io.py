"""The checkpoint writer a Trainer gets where torch_xla sees chips: XLA's own, never xtune's atomic one."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed here: the XLA tests run in their own "
                    "environment with the [tpu] extra and PJRT_DEVICE=CPU (see .ci/run)")

from helpers import ROOT, offline_env

#: run in its own Python: building an XLA Trainer starts torch_xla's runtime with one XLA:CPU
#: device, which the other XLA tests of this process (several devices, SPMD) must not inherit
CHILD = r"""
import json, sys
sys.path.insert(0, "tests")
from lightning_fabric.accelerators.xla import XLAAccelerator as FabricXLAAccelerator

available = sys.argv[1] == "tpu"
# what a TPU VM answers, on Fabric's class: Lightning's `auto` asks it, and Lightning's own inherits it
FabricXLAAccelerator.is_available = staticmethod(lambda: available)
FabricXLAAccelerator.auto_device_count = staticmethod(lambda: 1)

from helpers import compose
from xtune import hardware
from xtune.tasks.common import build_trainer

cfg = compose("train", ["trainer=auto"], output_dir=sys.argv[2])
kind = hardware.prepare(cfg)
trainer = build_trainer(cfg, [], [])
print(json.dumps({"kind": kind, "accelerator": type(trainer.accelerator).__name__,
                  "strategy": type(trainer.strategy).__name__,
                  "checkpoint_io": type(trainer.strategy.checkpoint_io).__name__}))
"""


@pytest.mark.parametrize("host,expected", [
    ("tpu", {"kind": "tpu", "accelerator": "XLAAccelerator", "strategy": "SingleDeviceXLAStrategy",
             "checkpoint_io": "XLACheckpointIO"}),
    ("cpu", {"kind": "cpu", "accelerator": "CPUAccelerator", "strategy": "SingleDeviceStrategy",
             "checkpoint_io": "AtomicCheckpointIO"}),
])
def test_trainer_auto_keeps_xlas_checkpoint_io_on_a_tpu_host(tmp_path, host, expected):
    """`trainer=auto` as it resolves on a TPU VM: Lightning picks its XLA accelerator and strategy,
    which assert on the first save that their checkpoint IO is XLACheckpointIO. xtune's atomic
    writer replaces only Lightning's plain TorchCheckpointIO (the CPU host), so the XLA one must
    survive. The chips are the one thing faked; the devices are XLA:CPU's (PJRT_DEVICE=CPU)."""
    result = subprocess.run([sys.executable, "-c", CHILD, host, str(tmp_path / "run")], cwd=ROOT, text=True,
                            capture_output=True, env=offline_env(tmp_path, PJRT_DEVICE="CPU"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
