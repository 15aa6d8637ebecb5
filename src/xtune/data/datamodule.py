"""ImageDataModule: splits from a source, transforms from the backbone, loaders from the config."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
from typing import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from xtune.data.datasets import EpochShuffle, TransformedSubset
from xtune.data.sources import Source
from xtune.errors import XtuneConfigError, XtuneDataError

log = logging.getLogger("xtune")


def _start_worker(worker_id: int, nice: int, rank: int) -> None:
    """A loader worker starts: it yields the CPU to the training process (a CPU step's threads
    stalled whenever a worker took one of their cores; on 2 cores niced workers gave issue 13's
    job ~4 % more training images/s), then seeds itself as Lightning would have
    (seed_everything(workers=True) adds its seeding only to loaders without a worker_init_fn)."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


def _stratified_split(targets, indices, count, seed):
    """Split `indices` into (kept, taken) with `count` taken, stratified by class when possible."""
    from sklearn.model_selection import train_test_split

    labels = [targets[i] for i in indices]
    counts = {label: labels.count(label) for label in set(labels)}
    stratify = labels if min(counts.values()) >= 2 else None
    try:
        kept, taken = train_test_split(indices, test_size=count, random_state=seed, stratify=stratify)
    except ValueError:  # too few samples per class for a stratified split of this size
        kept, taken = train_test_split(indices, test_size=count, random_state=seed)
    return sorted(kept), sorted(taken)


class ImageDataModule(pl.LightningDataModule):
    """Train / val / test image classification data for any timm backbone.

    Keyword arguments: xtune.config.schema.DataOptions (configs/data/*.yaml set them). `source`
    is a function returning a `Source`; `root` is passed to it when set; `classes` keeps only those classes (by name), relabelled in the given order;
    `train_fraction` < 1 keeps a fixed stratified share of the training split (label budgets).
    Preprocessing keys (image_size, mean, std, interpolation, crop_pct) left null take the
    backbone's pretrained data config; `augment` holds extra keyword arguments of
    `timm.data.create_transform` for training. `test_only` (eval.py on another folder) makes every
    sample a test sample: the source's test split when it has one, else all of it.
    """

    def __init__(self, source: Callable[..., Source], **options):
        # the keys, their defaults and bounds are declared once: xtune.config.schema.DataOptions
        from xtune.config.schema import DataOptions

        try:
            o = DataOptions(source=source, **options)
        except TypeError as error:  # an unknown key (Hydra's schema refuses it earlier)
            raise XtuneConfigError(f"data: {error}") from None
        super().__init__()
        self.options = o
        self.batch_size = o.batch_size
        self.eval_batch_size = o.eval_batch_size or o.batch_size
        self.num_workers = min(8, os.cpu_count() or 1) if o.num_workers is None else o.num_workers
        self.pin_memory = o.pin_memory
        # workers that live across epochs: starting them again every epoch costs seconds
        self.persistent_workers = o.persistent_workers and self.num_workers > 0
        self.worker_nice = o.worker_nice
        self.batch_preprocess = None  # set by resolve_transforms
        self.drop_last = o.drop_last
        self.preprocess = dict(
            img_size=o.image_size, mean=o.mean, std=o.std, interpolation=o.interpolation, crop_pct=o.crop_pct
        )
        self.augment = dict(o.augment or {})
        self.shuffle_seed = o.shuffle_seed
        self.resume_skip_samples = 0  # set by xtune.launch.preemption.ResumeMidEpoch
        self.data_config: dict | None = None
        source, root, classes, test_only = o.source, o.root, o.classes, o.test_only
        val_fraction, test_fraction, train_fraction, split_seed = (o.val_fraction, o.test_fraction,
                                                                   o.train_fraction, o.split_seed)

        loaded = self._load(source, root)
        self.classes, label_map = self._select(loaded.classes, classes)
        if len(self.classes) < 2:
            raise XtuneDataError(
                f"the data has {len(self.classes)} class ({', '.join(self.classes) or 'none'}): a classifier "
                "needs at least 2 classes to learn and measure anything; add class folders (or data.classes)"
            )
        if test_only:
            available = loaded.splits.get("test", loaded.splits["train"])
            self.splits = {"test": self._subset(available, None, label_map)}
            return
        self.splits = self._split(loaded.splits, val_fraction, test_fraction, split_seed, label_map)
        if train_fraction < 1.0:  # a low-label regime: a fixed, stratified share of the training split
            train = self.splits["train"]
            count = max(round(train_fraction * len(train)), self.num_classes)
            _, kept = _stratified_split(train.targets, list(range(len(train))), count, split_seed)
            self.splits["train"] = TransformedSubset(train.base, [train.indices[i] for i in kept],
                                                      label_map=train.label_map)
        self._warn_missing_classes()

    @staticmethod
    def _load(source, root) -> Source:
        takes_root = "root" in inspect.signature(source).parameters
        if root is not None and not takes_root:
            name = getattr(getattr(source, "func", source), "__name__", "this source")
            raise XtuneConfigError(f"data source '{name}' takes no data.root; remove data.root")
        return source(root=str(root)) if takes_root else source()

    @staticmethod
    def _select(names: list, keep: list | None) -> tuple[list, dict | None]:
        """Class names to keep and the label map {source index: new index}; None keeps all."""
        names = [str(name) for name in names]
        if keep is None:
            return names, None
        keep = [str(name) for name in keep]
        unknown = [name for name in keep if name not in names]
        if unknown or not keep or len(set(keep)) != len(keep):
            raise XtuneConfigError(
                f"data.classes={keep}: pick distinct names among the source's classes {names}"
            )
        return keep, {names.index(name): i for i, name in enumerate(keep)}

    @staticmethod
    def _subset(dataset, indices, label_map) -> TransformedSubset:
        indices = range(len(dataset)) if indices is None else indices
        if label_map is not None:
            indices = [i for i in indices if dataset.targets[i] in label_map]
        return TransformedSubset(dataset, indices, label_map=label_map)

    @classmethod
    def _split(cls, available: dict, val_fraction, test_fraction, seed, label_map) -> dict:
        def subset(dataset, indices=None):
            return cls._subset(dataset, indices, label_map)

        base = available["train"]
        pool = subset(base).indices
        total = len(pool)  # fractions are of the whole training source
        splits = {}
        for name, fraction in (("test", test_fraction), ("val", val_fraction)):
            count = round(fraction * total)
            if name in available:
                splits[name] = subset(available[name])
            elif count > 0 and len(pool) > count:
                pool, taken = _stratified_split(base.targets, pool, count, seed)
                splits[name] = subset(base, taken)
        if "val" not in splits:  # val_fraction 0: validate on the test split (the seed example's way)
            splits["val"] = splits.get("test") or subset(base, [])
        if "test" not in splits and not test_fraction:  # test_fraction 0 and no test/ folder
            log.warning("no test split (data.test_fraction=0): test metrics are measured on the validation split")
            splits["test"] = splits["val"]
        splits.setdefault("test", subset(base, []))
        splits["train"] = subset(base, pool)
        for name, dataset in splits.items():
            if len(dataset) == 0:
                raise XtuneDataError(
                    f"the {name} split is empty ({len(base)} training images); add images or "
                    "lower data.val_fraction / data.test_fraction"
                )
        return splits

    def _warn_missing_classes(self) -> None:
        """A class absent from a split is not measured there: say so (it is legal, not good)."""
        for name in ("train", "val", "test"):
            present = set(self.splits[name].targets)
            missing = [c for i, c in enumerate(self.classes) if i not in present]
            if missing:
                log.warning("%d of %d classes have no %s images (%s): %s; add images of %s",
                            len(missing), self.num_classes, name, ", ".join(missing[:5]),
                            "they are not measured" if name != "train" else "they cannot be learned",
                            "those classes" if len(missing) > 1 else "that class")

    def fingerprint(self) -> dict:
        """What the data is: classes, split sizes and a hash of every split's samples (file list,
        or pixels and labels). A resumed run must see the same; cheap (no image is decoded)."""
        import hashlib

        digest = hashlib.sha1()
        identities = {}
        for name in sorted(self.splits):
            split = self.splits[name]
            base = split.base
            if id(base) not in identities:
                identities[id(base)] = base.identity() if hasattr(base, "identity") else str(len(base))
            digest.update(f"{name}:{identities[id(base)]}:".encode())
            digest.update(torch.tensor(split.indices, dtype=torch.int64).numpy().tobytes())
        return {"classes": list(self.classes), "sizes": {n: len(s) for n, s in sorted(self.splits.items())},
                "content": digest.hexdigest()}

    def resolve_transforms(self, model: torch.nn.Module) -> dict:
        """Build the transforms from the model's pretrained data config (timm's own): per sample
        (decode, resize, crop, flip, ...) to a uint8 tensor, and per batch (`self.batch_preprocess`:
        normalisation, random erasing), which the module runs on its device."""
        from timm.data import create_transform, resolve_data_config

        from xtune.data.preprocess import BatchPreprocess

        args = {key: value for key, value in self.preprocess.items() if value is not None}
        self.data_config = resolve_data_config(args, model=model)
        evaluation = create_transform(**self.data_config, is_training=False, use_prefetcher=True)
        for name, split in self.splits.items():
            split.transform = evaluation
        if "train" in self.splits:
            self.splits["train"].transform = create_transform(**self.data_config, is_training=True,
                                                              use_prefetcher=True, **self.augment)
        erasing = {key: self.augment[key] for key in ("re_prob", "re_mode", "re_count") if self.augment.get(key)}
        self.batch_preprocess = BatchPreprocess(self.data_config["mean"], self.data_config["std"], **erasing)
        return self.data_config

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _loader(self, name: str, **kwargs) -> DataLoader:
        rank = int(getattr(getattr(self, "trainer", None), "global_rank", 0) or 0)
        return DataLoader(
            self.splits[name],
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=functools.partial(_start_worker, nice=self.worker_nice, rank=rank),
            **kwargs,
        )

    def _drop_last(self) -> bool:
        """drop_last as configured, or when the last batch of an epoch would hold one image:
        BatchNorm cannot train on a batch of one (timm's train.py always drops the ragged batch)."""
        if self.drop_last:
            return True
        trainer = getattr(self, "trainer", None)
        processes = max(int(getattr(trainer, "world_size", 1) or 1), 1)
        per_process = math.ceil(len(self.splits["train"]) / processes)  # a distributed sampler pads
        if per_process % self.batch_size == 1:
            log.info("the last training batch of each epoch would hold 1 image (%d images, batch size %d): "
                     "dropping it, since BatchNorm cannot train on one (data.drop_last=true drops every "
                     "ragged batch)", per_process, self.batch_size)
            return True
        return False

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator()
        sampler = EpochShuffle(len(self.splits["train"]), self.shuffle_seed, generator, skip=self.resume_skip_samples)
        self.resume_skip_samples = 0
        return self._loader(
            "train",
            batch_size=self.batch_size,
            sampler=sampler,
            generator=generator,
            drop_last=self._drop_last(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size)
