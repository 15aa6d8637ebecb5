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


def _image_files(folder: Path, root: Path, seen: dict) -> list[str]:
    """Image files under `folder`, following links, each real file once, in a stable order.

    Our own walk because torchvision's ImageFolder follows every link with os.walk: a link to an
    ancestor (`cat/loop -> ..`) silently multiplied the data set with wrong labels. A link that
    leads back into the folders being walked is refused, naming the link. `seen` maps each real
    file to the class folder it was first found in: a file in two classes is refused.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    found = []

    def walk(directory: Path, ancestors: tuple) -> None:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows links
                identity = (entry.stat().st_dev, entry.stat().st_ino)
                if identity in ancestors:
                    raise XtuneDataError(
                        f"{entry.path} links back to {os.path.realpath(entry.path)}, a folder it is inside of "
                        f"(a link loop in data.root {root}); remove the link"
                    )
                walk(Path(entry.path), ancestors + (identity,))
            elif entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS):
                identity = (entry.stat().st_dev, entry.stat().st_ino)
                first = seen.setdefault(identity, (entry.path, folder))
                if first[1] != folder:
                    raise XtuneDataError(
                        f"{entry.path} and {first[0]} are the same file in two class folders "
                        f"({first[1].name}, {folder.name}); keep it in one"
                    )
                if first[0] == entry.path:  # a second link to a file already counted: one sample
                    found.append(entry.path)

    top, data_root = folder.stat(), root.stat()
    walk(folder, ((data_root.st_dev, data_root.st_ino), (top.st_dev, top.st_ino)))
    return found


def _plain_header(head: bytes) -> bool:
    """A PNG with a non-empty IHDR, or a JPEG start: what PIL would open, read from 32 bytes
    (opening each file with PIL costs ~10x more, a second per 10,000 images)."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big") > 0 and int.from_bytes(head[20:24], "big") > 0
    return head[:3] == b"\xff\xd8\xff"


def _check_headers(paths: list[str]) -> None:
    """Every image must open (its header read, not decoded) before any training starts: a bad
    file found after an epoch of training costs that epoch. Threads, since this is file I/O.
    PNG and JPEG headers are checked from their first bytes; any other file is opened by PIL."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def problem(path: str) -> str | None:
        try:
            with open(path, "rb") as handle:
                if _plain_header(handle.read(32)):
                    return None
            with Image.open(path) as image:
                if image.width < 1 or image.height < 1:
                    return f"{path} (empty image)"
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return f"{path} ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
        return None

    # chunks, not one task per file: a thread pool's per-task cost is larger than a header read
    chunks = [paths[start:start + 512] for start in range(0, len(paths), 512)]
    workers = min(8, 2 * (os.cpu_count() or 1), len(chunks))
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        bad = [p for chunk in pool.map(lambda chunk: [problem(path) for path in chunk], chunks) for p in chunk if p]
    if bad:
        raise XtuneDataError(
            f"{len(bad)} of {len(paths)} images cannot be read, e.g. {'; '.join(bad[:3])}; "
            "delete or replace them, then run again"
        )


class ImageFiles:
    """A folder of class folders as a dataset: (RGB PIL image, class index), `.targets`,
    `.classes`, and `.identity()` (what the files are, for resume checks)."""

    def __init__(self, folder: Path, classes: list[str], samples: list[tuple[str, int]]):
        self.folder, self.classes, self.samples = folder, classes, samples
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return load_image(path), label

    def identity(self) -> str:
        """A hash of the file list (relative path, size, class), cheap: no file is read."""
        import hashlib

        digest = hashlib.sha1()
        for path, label in self.samples:
            digest.update(f"{os.path.relpath(path, self.folder)}\t{os.path.getsize(path)}\t{label}\n".encode())
        return digest.hexdigest()


def _class_folder(path: Path) -> ImageFiles:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not names:
        loose = sum(1 for e in os.scandir(path) if e.is_file())
        raise XtuneDataError(
            f"no class folders in {path} ({loose} loose files): put each class's images in "
            f"{path}/<class name>/, e.g. {path}/cat/001.jpg"
        )
    samples, seen = [], {}
    for label, name in enumerate(names):
        files = _image_files(path / name, path, seen)
        if not files:
            raise XtuneDataError(
                f"class folder {path / name} holds no images ({', '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        samples += [(file, label) for file in files]
    _check_headers([file for file, _ in samples])
    return ImageFiles(path, names, samples)


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


def _idx_source(path: Path, classes: list[str], missing: str) -> Source:
    """A data set of four IDX files (MNIST's format) found under `path`."""
    from xtune.data.datasets import ArrayImages

    files = _find_idx(path) if path.is_dir() else None
    if files is None:
        raise XtuneDataError(missing)
    arrays = {key: read_idx(file) for key, file in files.items()}
    splits = {
        split: ArrayImages(arrays[f"{split}_images"], arrays[f"{split}_labels"])
        for split in ("train", "test")
    }
    return Source(splits, classes)


def mnist(root: str, download: bool = False) -> Source:
    """MNIST from its four IDX files under `root` (or root/MNIST/raw, torchvision's layout).

    With `download=true` torchvision fetches them first (needs internet).
    """
    path = Path(root).expanduser()
    if download and (not path.is_dir() or _find_idx(path) is None):
        from torchvision.datasets import MNIST

        try:
            for train in (True, False):
                MNIST(str(path), train=train, download=True)
        except (RuntimeError, OSError) as error:  # every mirror failed: no network, most often
            reason = [line for line in str(error).splitlines() if line.strip()][-1:] or [type(error).__name__]
            raise XtuneDataError(
                f"data.source.download=true could not download MNIST into {path} ({reason[0].strip()}); "
                "without internet, copy the four IDX files there (or pass data.root=/folder/with/them)"
            ) from None
    return _idx_source(path, [str(i) for i in range(10)], (
        f"no MNIST IDX files under {path}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or their .gz) there, or add "
        "data.source.download=true on a machine with internet"))


#: Fashion-MNIST's labels, in label order (its README)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def fashion_mnist(root: str = "/usr/share/datasets/fashion-mnist") -> Source:
    """Zalando's Fashion-MNIST (60k train, 10k test, 28x28 grayscale, 10 clothing classes) from its
    four IDX files: where Debian's `dataset-fashion-mnist` package puts them, or under `root`."""
    path = Path(root).expanduser()
    return _idx_source(path, list(FASHION_CLASSES), (
        f"no Fashion-MNIST IDX files under {path}: install them with apt-get install dataset-fashion-mnist "
        "(Debian/Ubuntu, into /usr/share/datasets/fashion-mnist), or pass data.root=/folder/with/the/four/files "
        "(train-images-idx3-ubyte.gz, ...)"))


def cifar10(root: str, download: bool = False) -> Source:
    """CIFAR-10 in torchvision's layout (root/cifar-10-batches-py); `download=true` fetches it."""
    from torchvision.datasets import CIFAR10

    from xtune.data.datasets import ArrayImages

    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = CIFAR10(str(Path(root).expanduser()), train=train, download=download)
        except (RuntimeError, OSError) as error:
            reason = " ".join(str(error).split())[:200]
            raise XtuneDataError(
                f"CIFAR-10 not found under {root} ({reason}); put cifar-10-batches-py there "
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
