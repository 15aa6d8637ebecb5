"""Data sources: small functions that return the available splits and the class names.

A source returns a `Source` whose datasets yield `(PIL image or tensor, class index)` and expose
`.targets`. Splits a source does not have (val, test) are carved from train by the DataModule
with a seeded, stratified split. Transforms are applied later, from the backbone's data config.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from xtune.errors import XtuneDataError


@dataclass
class Source:
    splits: dict  # "train" always; "val" and "test" when the source has them
    classes: list = field(default_factory=list)


def digits() -> Source:
    """scikit-learn's handwritten digits: 1,797 8x8 grayscale images of 0-9, shipped with it."""
    from sklearn.datasets import load_digits

    from xtune.data.datasets import ArrayImages

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return Source({"train": ArrayImages(images, bunch.target)}, [str(i) for i in range(10)])


# --- user images ------------------------------------------------------------------------------

_SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def load_image(path: str):
    """Open an image as RGB; a file PIL cannot read becomes one clear error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise XtuneDataError(
            f"cannot read image {path} ({type(error).__name__}: {error}); "
            "replace or delete the file"
        ) from None


def _class_folder(path: Path):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not names:
        loose = sum(1 for e in os.scandir(path) if e.is_file())
        raise XtuneDataError(
            f"no class folders in {path} ({loose} loose files): put each class's images in "
            f"{path}/<class name>/, e.g. {path}/cat/001.jpg"
        )
    try:
        return ImageFolder(str(path), loader=load_image)
    except FileNotFoundError as error:
        raise XtuneDataError(
            f"{error} (in {path}); every class folder needs at least one image "
            f"({', '.join(IMG_EXTENSIONS)})"
        ) from None


def imagefolder(root: str) -> Source:
    """A folder of your own images: ROOT/<class>/*.jpg, or ROOT/train|val|test/<class>/*.jpg.

    Missing val/test folders are carved from train (data.val_fraction / data.test_fraction).
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise XtuneDataError(
            f"data.root {path} does not exist; pass data.root=/path/to/images holding one "
            "folder per class (or train/, val/, test/ folders of class folders)"
        )
    if not path.is_dir():
        raise XtuneDataError(f"data.root {path} is a file; pass the folder that holds the class folders")
    found = {}
    for split, names in _SPLIT_DIRS.items():
        for name in names:
            if (path / name).is_dir():
                found[split] = path / name
                break
    if found and "train" not in found:
        raise XtuneDataError(
            f"{path} has {'/'.join(p.name for p in found.values())}/ but no train/ folder; "
            "add train/<class>/ images or point data.root at a folder of class folders"
        )
    if not found:
        found = {"train": path}
    splits = {split: _class_folder(folder) for split, folder in found.items()}
    classes = splits["train"].classes
    for split, dataset in splits.items():
        if dataset.classes != classes:
            extra = sorted(set(dataset.classes) - set(classes))
            missing = sorted(set(classes) - set(dataset.classes))
            raise XtuneDataError(
                f"class folders differ between train/ and {found[split].name}/ in {path}: "
                f"{found[split].name}/ has extra {extra} and lacks {missing}; "
                "every split needs the same class folders"
            )
    return Source(splits, list(classes))


# --- classic data sets --------------------------------------------------------------------------

_IDX = {
    "train_images": "train-images*idx3-ubyte",
    "train_labels": "train-labels*idx1-ubyte",
    "test_images": "t10k-images*idx3-ubyte",
    "test_labels": "t10k-labels*idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Our own 10 lines because torchvision's reader only takes uncompressed files in its own
    MNIST/raw layout; this one takes the files where the user has them.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        magic = int.from_bytes(data[0:4], "big")
        if magic >> 8 != 0x08 or not 1 <= magic & 0xFF <= 4:
            raise ValueError(f"magic number {magic:#x} is not an unsigned-byte IDX file")
        ndim = magic & 0xFF
        dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, EOFError) as error:
        raise XtuneDataError(f"cannot read IDX file {path}: {error}") from None


def _find_idx(root: Path) -> dict | None:
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        files = {}
        for key, pattern in _IDX.items():
            matches = sorted(folder.glob(pattern)) + sorted(folder.glob(pattern + ".gz"))
            if matches:
                files[key] = matches[0]
        if len(files) == len(_IDX):
            return files
    return None


def mnist(root: str, download: bool = False) -> Source:
    """MNIST from its four IDX files under `root` (or root/MNIST/raw, torchvision's layout).

    With `download=true` torchvision fetches them first (needs internet).
    """
    from xtune.data.datasets import ArrayImages

    path = Path(root).expanduser()
    files = _find_idx(path) if path.is_dir() else None
    if files is None and download:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(path), train=train, download=True)
        files = _find_idx(path)
    if files is None:
        raise XtuneDataError(
            f"no MNIST IDX files under {path}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or their .gz) there, or add "
            "data.source.download=true on a machine with internet"
        )
    arrays = {key: read_idx(file) for key, file in files.items()}
    splits = {
        split: ArrayImages(arrays[f"{split}_images"], arrays[f"{split}_labels"])
        for split in ("train", "test")
    }
    return Source(splits, [str(i) for i in range(10)])


def cifar10(root: str, download: bool = False) -> Source:
    """CIFAR-10 in torchvision's layout (root/cifar-10-batches-py); `download=true` fetches it."""
    from torchvision.datasets import CIFAR10

    from xtune.data.datasets import ArrayImages

    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = CIFAR10(str(Path(root).expanduser()), train=train, download=download)
        except RuntimeError as error:
            raise XtuneDataError(
                f"CIFAR-10 not found under {root} ({error}); put cifar-10-batches-py there "
                "or add data.source.download=true on a machine with internet"
            ) from None
        splits[split] = ArrayImages(dataset.data, dataset.targets)
    return Source(splits, list(dataset.classes))


def synthetic(
    num_classes: int = 10,
    num_samples: int = 1024,
    image_size: int = 224,
    channels: int = 3,
    seed: int = 0,
) -> Source:
    """Random, already normalised image tensors of a fixed shape, for benchmarks.

    A pool of distinct images (class = pool index mod num_classes) is reused, so memory stays
    small at any `num_samples` and a model can still fit the labels.
    """
    import torch

    from xtune.data.datasets import TensorImages

    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(num_classes * 4, channels, image_size, image_size, generator=generator)
    sizes = {"train": num_samples, "val": max(num_samples // 4, 1), "test": max(num_samples // 4, 1)}
    splits = {split: TensorImages(pool, n, num_classes) for split, n in sizes.items()}
    return Source(splits, [f"class_{i}" for i in range(num_classes)])
