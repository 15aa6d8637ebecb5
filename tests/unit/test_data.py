"""Sources, splits, transforms and loaders on real (small) data."""

import gzip
import os
from functools import partial
from pathlib import Path

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
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8  # uint8 until the batch
    # normalised per batch with the model's own statistics, not ImageNet's: black maps to -mean/std
    black = module.splits["test"].transform(Image.new("RGB", (8, 8)))
    assert black.dtype == torch.uint8 and int(black.max()) == 0
    batch = module.batch_preprocess(torch.stack([black, black]), training=False)
    mean, std = config["mean"], config["std"]
    assert batch.dtype == torch.float32
    assert torch.allclose(batch[0, :, 0, 0], torch.tensor([-m / s for m, s in zip(mean, std)]), atol=1e-5)
    assert module.batch_preprocess(batch, training=False) is batch  # float batches pass through
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


class WorkerFacts(torch.utils.data.Dataset):
    """Per item: the loading worker's nice level, and draws from its Python and NumPy RNGs."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import os
        import random

        return os.getpriority(os.PRIO_PROCESS, 0), random.randrange(2**31), int(np.random.randint(2**31))


@pytest.mark.parametrize("nice", [10, 0])
def test_loader_workers_yield_the_cpu_and_keep_lightnings_worker_seeds(monkeypatch, nice):
    from lightning_fabric.utilities.seed import pl_worker_init_function
    from torch.utils.data import DataLoader

    monkeypatch.setenv("PL_SEED_WORKERS", "1")  # what seed_everything(workers=True) sets
    module = digits_module(num_workers=2, worker_nice=nice, persistent_workers=False, eval_batch_size=1)
    module.splits["val"] = WorkerFacts()

    def facts(loader):
        torch.manual_seed(3)  # the base seed of the workers
        return [tuple(int(value) for value in item) for item in loader]

    ours = facts(module.val_dataloader())
    assert [level for level, *_ in ours] == [min(os.getpriority(os.PRIO_PROCESS, 0) + nice, 19)] * 2
    # Lightning adds its worker seeding only to loaders without a worker_init_fn: ours runs it
    theirs = facts(DataLoader(WorkerFacts(), batch_size=1, num_workers=2,
                              worker_init_fn=partial(pl_worker_init_function, rank=0)))
    assert [draws for _, *draws in ours] == [draws for _, *draws in theirs]
    assert ours[0][1:] != ours[1][1:]


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
    ("empty_class", "class folder .*zebra holds no images"),
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


def test_unreadable_images_are_found_before_training_and_named(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    bad = tmp_path / "red" / "zz_bad.png"
    bad.write_bytes(b"this is not a png")
    (tmp_path / "blue" / "empty.jpg").write_bytes(b"")
    with pytest.raises(XtuneDataError, match=r"2 of 8 images cannot be read, e\.g\. .*empty\.jpg.*zz_bad\.png"):
        sources.imagefolder(str(tmp_path))


def test_headers_are_checked_from_their_bytes_and_other_formats_by_pil(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    good = (tmp_path / "red" / "000.png").read_bytes()
    # a PNG whose header says 0 pixels wide; a PNG cut inside its header; a JPEG; a BMP (opened by PIL)
    (tmp_path / "red" / "zero.png").write_bytes(good[:16] + (0).to_bytes(4, "big") + good[20:])
    (tmp_path / "red" / "short.png").write_bytes(good[:12])
    Image.new("RGB", (5, 4), "red").save(tmp_path / "blue" / "ok.jpg")
    Image.new("RGB", (5, 4), "blue").save(tmp_path / "blue" / "ok.bmp")
    with pytest.raises(XtuneDataError, match=r"2 of 10 images cannot be read, e\.g\. .*short\.png.*zero\.png"):
        sources.imagefolder(str(tmp_path))
    (tmp_path / "red" / "zero.png").unlink()
    (tmp_path / "red" / "short.png").unlink()
    assert len(sources.imagefolder(str(tmp_path)).splits["train"]) == 8


def test_a_truncated_image_is_named_when_decoded(tmp_path):
    """The header check is fast, not a full decode: a cut-off file is still named when read."""
    write_image_folder(tmp_path, per_class=2, size=64)
    cut = tmp_path / "red" / "001.png"
    cut.write_bytes(cut.read_bytes()[:200])
    dataset = sources.imagefolder(str(tmp_path)).splits["train"]
    index = [path for path, _ in dataset.samples].index(str(cut))
    with pytest.raises(XtuneDataError, match=f"cannot read image {cut}"):
        dataset[index]


def test_a_link_loop_is_refused_naming_the_link(tmp_path):
    write_image_folder(tmp_path, per_class=3)
    (tmp_path / "red" / "loop").symlink_to("..")
    with pytest.raises(XtuneDataError, match=r"red/loop links back to .*a link loop"):
        sources.imagefolder(str(tmp_path))


def test_links_never_count_a_file_twice(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3)
    (root / "red" / "again.png").symlink_to(root / "red" / "000.png")
    extra = write_image_folder(tmp_path / "elsewhere", classes=("red",), per_class=2, seed=1)
    (root / "red" / "more").symlink_to(extra / "red")  # a linked folder outside: followed
    dataset = sources.imagefolder(str(root)).splits["train"]
    assert len(dataset) == 9 + 2
    (root / "blue" / "stolen.png").symlink_to(root / "red" / "001.png")
    with pytest.raises(XtuneDataError, match="same file in two class folders"):
        sources.imagefolder(str(root))


def test_one_class_cannot_measure_anything(tmp_path):
    write_image_folder(tmp_path, classes=("only",), per_class=6)
    with pytest.raises(XtuneDataError, match="needs at least 2 classes"):
        ImageDataModule(source=sources.imagefolder, root=str(tmp_path))
    with pytest.raises(XtuneDataError, match="needs at least 2 classes"):
        digits_module(classes=[3])


def test_a_class_missing_from_a_split_is_named(tmp_path, caplog):
    write_image_folder(tmp_path, classes=("a", "b", "c"), per_class=10)
    for path in sorted((tmp_path / "c").iterdir())[1:]:
        path.unlink()
    with caplog.at_level("WARNING", logger="xtune"):
        module = ImageDataModule(source=sources.imagefolder, root=str(tmp_path), val_fraction=0.2, test_fraction=0.2)
    assert module.num_classes == 3
    assert "classes have no val images (c)" in caplog.text or "classes have no test images (c)" in caplog.text


def test_test_only_evaluates_every_image_of_a_folder(tmp_path):
    write_image_folder(tmp_path / "flat", per_class=40)
    module = ImageDataModule(source=sources.imagefolder, root=str(tmp_path / "flat"), test_only=True)
    assert set(module.splits) == {"test"} and len(module.splits["test"]) == 120
    for split in ("train", "test"):
        write_image_folder(tmp_path / "split" / split, per_class=5 if split == "test" else 9)
    module = ImageDataModule(source=sources.imagefolder, root=str(tmp_path / "split"), test_only=True)
    assert len(module.splits["test"]) == 15  # its test/ folder


def test_fingerprint_changes_with_the_files(tmp_path):
    root = write_image_folder(tmp_path, per_class=10)

    def fingerprint():
        return ImageDataModule(source=sources.imagefolder, root=str(root)).fingerprint()

    first = fingerprint()
    assert first == fingerprint() and first["sizes"]["train"] == 21
    (root / "red" / "000.png").unlink()
    assert fingerprint()["content"] != first["content"]
    assert digits_module().fingerprint() == digits_module().fingerprint()
    assert digits_module().fingerprint()["content"] != digits_module(split_seed=1).fingerprint()["content"]


@pytest.mark.parametrize("train_size,batch_size,dropped", [(97, 32, True), (96, 32, False), (98, 32, False)])
def test_a_last_batch_of_one_image_is_dropped(train_size, batch_size, dropped):
    module = digits_module(batch_size=batch_size, val_fraction=0.0, test_fraction=0.1)
    base = module.splits["train"]
    module.splits["train"] = type(base)(base.base, base.indices[:train_size], label_map=base.label_map)
    module.resolve_transforms(timm.create_model("test_resnet", pretrained=False, num_classes=10))
    loader = module.train_dataloader()
    assert loader.drop_last is dropped
    assert min(len(batch[1]) for batch in loader) > 1


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


def test_fashion_mnist_without_its_files_names_the_package(tmp_path):
    with pytest.raises(XtuneDataError, match=r"apt-get install dataset-fashion-mnist.*data.root="):
        sources.fashion_mnist(str(tmp_path))


def test_fashion_mnist_reads_idx_files_with_its_class_names(tmp_path):
    write_mnist_idx(tmp_path, compress=True)
    module = ImageDataModule(source=sources.fashion_mnist, root=str(tmp_path), val_fraction=0.1)
    assert module.classes[0] == "T-shirt/top" and module.classes[-1] == "Ankle boot"
    assert len(module.splits["test"]) == 397  # the source's own test split


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fashion_mnist_from_the_debian_package():
    source = sources.fashion_mnist()
    train, test = source.splits["train"], source.splits["test"]
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(test.targets).tolist() == [1000] * 10
    image, label = train[0]
    assert image.size == (28, 28) and image.mode == "RGB" and source.classes[label] == "Ankle boot"


def test_random_erasing_runs_on_the_batch_and_follows_the_seed():
    module = digits_module(augment={"re_prob": 1.0, "hflip": 0.0})
    module.resolve_transforms(timm.create_model("test_resnet", pretrained=False, num_classes=10))
    images = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    plain = module.batch_preprocess(images, training=False)
    import random

    def seeded(seed):  # what ReseedEveryStep does before every training step
        random.seed(seed)
        torch.manual_seed(seed)
        return module.batch_preprocess(images, training=True)

    erased, again = seeded(3), seeded(3)
    assert not torch.equal(erased, plain) and torch.equal(erased, again)
    assert torch.equal(module.batch_preprocess(images, training=False, dtype=torch.bfloat16), plain.bfloat16())
