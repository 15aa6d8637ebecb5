"""Sources, splits, transforms and loaders on real (small) data."""

import gzip
from functools import partial

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from helpers import write_image_folder, write_mnist_idx
from xtune.data import ImageDataModule
from xtune.data import sources
from xtune.data.sources import read_idx
from xtune.errors import XtuneConfigError, XtuneDataError


def digits_module(**kwargs):
    return ImageDataModule(source=sources.digits, **kwargs)


def test_digits_splits_are_seeded_stratified_and_disjoint():
    a = digits_module(val_fraction=0.15, test_fraction=0.2, split_seed=0)
    b = digits_module(val_fraction=0.15, test_fraction=0.2, split_seed=0)
    c = digits_module(val_fraction=0.15, test_fraction=0.2, split_seed=1)
    sizes = {name: len(split) for name, split in a.splits.items()}
    assert sizes == {"test": 359, "val": 270, "train": 1168}
    assert a.splits["test"].indices == b.splits["test"].indices
    assert a.splits["test"].indices != c.splits["test"].indices
    parts = [set(a.splits[n].indices) for n in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 1797
    # stratified: every digit appears in the test split in about its share
    counts = np.bincount(a.splits["test"].targets, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38, counts
    assert a.classes == [str(i) for i in range(10)]


def test_class_selection_relabels():
    module = digits_module(classes=[5, 6, 7, 8, 9], val_fraction=0.1, test_fraction=0.1)
    assert module.classes == ["5", "6", "7", "8", "9"] and module.num_classes == 5
    labels = set(module.splits["train"].targets) | set(module.splits["test"].targets)
    assert labels == {0, 1, 2, 3, 4}
    total = sum(len(s) for s in module.splits.values())
    assert total == sum(1 for t in sources.digits().splits["train"].targets if t >= 5)
    with pytest.raises(XtuneConfigError, match="pick distinct names"):
        digits_module(classes=[3, 11])


def test_transforms_come_from_the_backbone_and_grayscale_becomes_rgb():
    module = digits_module(image_size=48, crop_pct=1.0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=10, img_size=48)
    config = module.resolve_transforms(timm.create_model("test_resnet", pretrained=False, num_classes=10))
    assert config["input_size"] == (3, 48, 48)
    assert config["mean"] == timm.get_pretrained_cfg("test_resnet").mean
    image, label = module.splits["train"][0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    # the model's own statistics, not ImageNet's: a black pixel maps to -mean/std
    black = module.splits["test"].transform(Image.new("RGB", (8, 8)))
    mean, std = config["mean"], config["std"]
    assert torch.allclose(black[:, 0, 0], torch.tensor([-m / s for m, s in zip(mean, std)]), atol=1e-5)
    assert module.resolve_transforms(vit)["mean"] == timm.get_pretrained_cfg("test_vit").mean


def test_native_size_when_image_size_is_null():
    module = digits_module(image_size=None)
    config = module.resolve_transforms(timm.create_model("test_resnet", pretrained=False, num_classes=10))
    assert config["input_size"] == timm.get_pretrained_cfg("test_resnet").input_size


def test_train_order_depends_only_on_seed_and_epoch():
    module = digits_module(batch_size=32, shuffle_seed=7)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    module.resolve_transforms(model)

    def order(epoch):
        loader = module.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return list(iter(loader.sampler))

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(i for i, _ in order(0)) == list(range(len(module.splits["train"])))
    # every sample carries its own augmentation seed: the same crop for the same (epoch, sample)
    dataset = module.splits["train"]
    key = order(2)[5]
    assert torch.equal(dataset[key][0], dataset[key][0])
    assert not torch.equal(dataset[key][0], dataset[(key[0], key[1] + 1)][0])
    # a resumed epoch skips what was already trained on, in the same order
    sampler = module.train_dataloader().sampler
    sampler.set_epoch(3)
    sampler.skip = 10
    assert list(iter(sampler)) == order(3)[10:]


def test_root_is_refused_for_digits():
    with pytest.raises(XtuneConfigError, match="takes no data.root"):
        digits_module(root="/tmp")


# --- imagefolder --------------------------------------------------------------------------------

def test_imagefolder_flat_layout_is_split(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=10)
    module = ImageDataModule(source=sources.imagefolder, root=str(tmp_path / "imgs"),
                             val_fraction=0.2, test_fraction=0.2)
    assert module.classes == ["blue", "green", "red"]
    assert {n: len(s) for n, s in module.splits.items()} == {"test": 6, "val": 6, "train": 18}


def test_imagefolder_split_folders(tmp_path):
    for split in ("train", "val", "test"):
        write_image_folder(tmp_path / split, per_class=4)
    module = ImageDataModule(source=sources.imagefolder, root=str(tmp_path))
    assert {n: len(s) for n, s in module.splits.items()} == {"test": 12, "val": 12, "train": 12}


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("file", "is a file"),
    ("empty", "no class folders in"),
    ("loose", "no class folders in"),
    ("empty_class", "Found no valid file"),
    ("no_train", "but no train/ folder"),
    ("mismatch", "class folders differ between train/ and val/"),
])
def test_imagefolder_bad_layouts(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "empty":
        root.mkdir()
    elif case == "loose":
        root.mkdir()
        Image.new("RGB", (4, 4)).save(root / "a.png")
    elif case == "empty_class":
        write_image_folder(root, per_class=2)
        (root / "zebra").mkdir()
    elif case == "no_train":
        write_image_folder(root / "val", per_class=2)
    elif case == "mismatch":
        write_image_folder(root / "train", classes=("a", "b"), per_class=2)
        write_image_folder(root / "val", classes=("a", "c"), per_class=2)
    with pytest.raises(XtuneDataError, match=message):
        sources.imagefolder(str(root))


def test_corrupt_image_names_the_file(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    bad = tmp_path / "red" / "zz_bad.png"
    bad.write_bytes(b"this is not a png")
    dataset = sources.imagefolder(str(tmp_path)).splits["train"]
    index = dataset.samples.index((str(bad), dataset.class_to_idx["red"]))
    with pytest.raises(XtuneDataError, match=f"cannot read image {bad}"):
        dataset[index]


# --- mnist, cifar10, synthetic --------------------------------------------------------------------

@pytest.mark.parametrize("layout,compress", [("flat", False), ("torchvision", True)])
def test_mnist_idx_files(tmp_path, layout, compress):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    write_mnist_idx(folder, compress=compress)
    module = ImageDataModule(source=sources.mnist, root=str(tmp_path), val_fraction=0.1)
    assert len(module.splits["test"]) == 397 and len(module.splits["train"]) + len(module.splits["val"]) == 1400
    image, label = module.splits["train"].base[0]
    assert image.size == (28, 28) and image.mode == "RGB" and 0 <= label <= 9


def test_mnist_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(XtuneDataError, match="no MNIST IDX files under .*data.source.download=true"):
        sources.mnist(str(tmp_path))


def test_idx_reader_refuses_other_files(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 20))
    with pytest.raises(XtuneDataError, match="cannot read IDX file"):
        read_idx(path)


def test_cifar10_missing_says_what_to_do(tmp_path):
    with pytest.raises(XtuneDataError, match="CIFAR-10 not found under"):
        sources.cifar10(str(tmp_path))


def test_synthetic_tensors_skip_transforms():
    module = ImageDataModule(source=partial(sources.synthetic, num_classes=4, num_samples=64, image_size=40))
    module.resolve_transforms(timm.create_model("test_resnet", pretrained=False, num_classes=4))
    image, label = module.splits["train"][5]
    assert image.shape == (3, 40, 40) and label == 5 % 4
    assert module.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert set(module.splits) == {"train", "val", "test"}
