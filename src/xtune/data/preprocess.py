"""The per-batch half of the input pipeline: uint8 images become normalised floats on the device.

Decoding and geometric augmentation stay per sample (in DataLoader workers); everything the
batch can do at once happens here, where the model runs: the uint8 -> float conversion, the
normalisation with the backbone's mean/std, and random erasing. That is timm's PrefetchLoader
design: 4x less data through workers, pinned memory and the host-to-device copy, and no
per-sample float work on the CPU. Float batches (synthetic data, benchmarks) pass through.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchPreprocess(nn.Module):
    """uint8 (N, C, H, W) -> normalised float in `dtype`; timm's RandomErasing on training batches.

    Random numbers come from the global RNGs, which xtune reseeds before every training step
    (ReseedEveryStep), so a resumed run erases the same pixels as an uninterrupted one.
    """

    def __init__(self, mean, std, re_prob: float = 0.0, re_mode: str = "pixel", re_count: int = 1):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255, persistent=False)
        self.re_prob, self.re_mode, self.re_count = float(re_prob or 0.0), re_mode, int(re_count or 1)

    def forward(self, images: torch.Tensor, training: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        # the dtype the model computes in: bf16 under bf16-true (Lightning sets the default dtype
        # while a step runs), float32 otherwise (autocast handles mixed precision)
        dtype = dtype or torch.get_default_dtype()
        images = images.float().sub_(self.mean).div_(self.std)
        if training and self.re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            images = RandomErasing(self.re_prob, mode=self.re_mode, max_count=self.re_count,
                                   device=images.device)(images)
        return images.to(dtype)
