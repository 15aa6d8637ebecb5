"""BatchNorm that stays data parallel under SPMD.

torch_xla lowers a training-mode BatchNorm to XLA's `batch-norm-training` instruction, and XLA's
SPMD partitioner does not split that instruction along the batch: it all-gathers the activations
to the whole batch and every device then runs the rest of the network on all of it (measured on
XLA:CPU, torch_xla 2.9: a batch-sharded test_resnet ran every convolution after the first
BatchNorm on the global batch; experiments/hardware_comparison/xla_cpu_spmd.md). Written with
matrix products and elementwise ops instead, the same computation partitions like any other:
each device normalises its rows with statistics all-reduced over the global batch (what
SyncBatchNorm does under DDP).

`install()` replaces torch.nn.functional.batch_norm, which nn.BatchNorm1d/2d/3d and timm's
BatchNormAct2d call, for the rest of the process (an SPMD process stays SPMD; XLASPMDStrategy
installs it when its mesh has more than one device): a training-mode call on an XLA tensor takes
the decomposition, every other call the original. Running statistics follow torch's rule (momentum
update; the variance stored unbiased). Our own code because neither torch_xla nor XLA offers a
partitionable BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ORIGINAL = F.batch_norm


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """torch.nn.functional.batch_norm; training mode on XLA computed from reductions SPMD can split."""
    if not (training and input.device.type == "xla"):
        return _ORIGINAL(input, running_mean, running_var, weight, bias, training, momentum, eps)
    shape = [1, -1] + [1] * (input.dim() - 2)
    count = input.numel() // input.shape[1]
    mean = _channel_sums(input) / count
    centered = input - mean.view(shape)
    var = _channel_sums(centered.square()) / count  # biased, as the normalisation uses
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.detach() * (count / max(count - 1, 1)), alpha=momentum)
    out = centered * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


def _channel_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-channel sums over every other dimension, as a matrix product: XLA accumulates a dot in
    float32 (on a TPU's matrix units too) where a reduction of bf16 values (Lightning's bf16-true
    stores float32 as bf16) accumulates in bf16 and loses the mean (measured: 2.7 off a mean of 3
    over 16384 values, against 0.008 through the dot). The batch dimension stays split: each device
    sums its rows and XLA all-reduces the partial sums."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N * spatial)
    return (flat @ torch.ones(flat.shape[1], 1, dtype=x.dtype, device=x.device)).squeeze(1)


def install() -> None:
    """Route torch.nn.functional.batch_norm through `batch_norm` (idempotent)."""
    F.batch_norm = batch_norm
