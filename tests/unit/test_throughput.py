"""FLOP counting and the peak table behind MFU."""

import timm
import torch

from xtune.hardware.throughput import math_type, peak_flops, train_step_flops


def test_peak_flops_of_known_devices():
    assert peak_flops("NVIDIA H200", "bf16-mixed", "cuda") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16-mixed", "cuda") == 756e12  # not the SXM part
    assert peak_flops("NVIDIA A100-SXM4-80GB", "16-mixed", "cuda") == 312e12
    assert peak_flops("Tesla V100-SXM2-16GB", "bf16-mixed", "cuda") is None  # no bf16 on a V100
    assert peak_flops("TPU v5 lite", "bf16-true", "tpu") == 197e12
    assert peak_flops("Intel(R) Xeon(R) Processor", "32-true", "cpu") is None


def test_math_type_follows_precision_and_tf32():
    assert math_type("bf16-mixed", "cuda") == "bf16"
    assert math_type("16-mixed", "cuda") == "fp16"
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert math_type("32-true", "cuda") == "tf32"
        torch.set_float32_matmul_precision("highest")
        assert math_type("32-true", "cuda") == "fp32"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_train_step_flops_equal_a_real_count_at_that_batch():
    """train_step_flops counts a batch of 2 and scales; the reference counts the real batch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("test_resnet", num_classes=10)
    sixteen = train_step_flops(model, 16, (3, 32, 32), 10)
    probe = timm.create_model("test_resnet", num_classes=10).train()
    with FlopCounterMode(display=False) as full:
        torch.nn.functional.cross_entropy(probe(torch.randn(16, 3, 32, 32)), torch.randint(0, 10, (16,))).backward()
    assert sixteen == full.get_total_flops()
    with FlopCounterMode(display=False) as forward:
        probe(torch.randn(16, 3, 32, 32))
    # backward costs about twice the forward
    assert 2.5 * forward.get_total_flops() <= sixteen <= 3.5 * forward.get_total_flops()
