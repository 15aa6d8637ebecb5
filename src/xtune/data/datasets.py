"""Small dataset wrappers shared by the sources. They yield (PIL image or tensor, class index)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from xtune.errors import XtuneDataError


class ArrayImages(Dataset):
    """uint8 images held in memory, (N, H, W) grayscale or (N, H, W, 3) RGB, served as RGB PIL."""

    def __init__(self, images: np.ndarray, targets: Sequence[int]):
        if len(images) != len(targets):
            raise XtuneDataError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]).convert("RGB"), self.targets[index]

    def identity(self) -> str:
        """A hash of the pixels and labels (resume checks: the same data, not just its size)."""
        import hashlib

        digest = hashlib.sha1(np.ascontiguousarray(self.images).data)
        digest.update(np.asarray(self.targets, dtype=np.int64).tobytes())
        return digest.hexdigest()


class TensorImages(Dataset):
    """`length` samples cycling through a pool of preprocessed image tensors (synthetic data).

    Sample i is pool image i mod len(pool), labelled (i mod len(pool)) mod num_classes. Tensors
    get no transform.
    """

    def __init__(self, pool: torch.Tensor, length: int, num_classes: int):
        self.pool = pool
        self.targets = [(i % len(pool)) % num_classes for i in range(length)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.pool[index % len(self.pool)], self.targets[index]

    def identity(self) -> str:
        import hashlib

        digest = hashlib.sha1(self.pool.numpy().tobytes())
        digest.update(str(len(self.targets)).encode())
        return digest.hexdigest()


class TransformedSubset(Dataset):
    """`indices` of `base`, labels mapped through `label_map`, `transform` applied to PIL images
    (tensors pass through)."""

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int],
        transform: Callable | None = None,
        label_map: dict | None = None,
    ):
        self.base = base
        self.indices = list(indices)
        self.transform = transform
        self.label_map = label_map
        targets = base.targets
        self.targets = [self._label(targets[i]) for i in self.indices]

    def _label(self, target: int) -> int:
        return target if self.label_map is None else self.label_map[target]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        # training keys are (index, seed) pairs from EpochShuffle: the random augmentation of a
        # sample is then a function of (shuffle seed, epoch, sample) alone - not of which worker
        # or process loads it, nor of when - so a resumed run augments exactly as the original
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.base[self.indices[index]]
        if self.transform is not None and isinstance(image, Image.Image):
            if seed is not None:
                _seed_all(seed)
            image = self.transform(image)
        return image, self._label(target)


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    # the CPU generator the transforms draw from; torch.manual_seed would also (re)seed every
    # accelerator backend: 100x slower, and per sample that halved throughput on small images
    torch.default_generator.manual_seed(seed)


class EpochShuffle(Sampler[int]):
    """A shuffle whose order depends only on (seed, epoch), so a resumed run sees the same order.

    PyTorch's RandomSampler draws its order from the global RNG, which a resumed run does not
    restore; Lightning calls `set_epoch` before every epoch. `generator` (also given to the
    DataLoader) is re-seeded too, so DataLoader worker seeds are resume-proof as well.
    """

    def __init__(self, length: int, seed: int, generator: torch.Generator, skip: int = 0):
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.generator = generator
        self.skip = skip  # samples of the next epoch already trained on (a mid-epoch resume)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed + epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        order = torch.Generator().manual_seed(self.seed + self.epoch)
        skip, self.skip = self.skip, 0
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_033
        # each index travels with its augmentation seed (see TransformedSubset.__getitem__)
        return iter([(i, (base + i) % 2**62) for i in torch.randperm(self.length, generator=order).tolist()[skip:]])
