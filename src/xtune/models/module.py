"""ClassificationModule: a timm backbone trained with cross-entropy, measured with torchmetrics."""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric

from xtune.models.metrics import ClassificationTally


class ClassificationModule(pl.LightningModule):
    """Fine-tunes `backbone` (a timm model whose head has `num_classes` outputs).

    `optimizer(model, lr=...) -> Optimizer` and `scheduler(optimizer, num_epochs,
    updates_per_epoch)` are partials of timm's `create_optimizer_v2` / `create_scheduler_v2`
    (configs/optim, configs/scheduler); the scheduler is stepped per optimizer update.
    `optimizer_kwargs` come from the fine-tuning strategy (param groups, layer decay) and the
    hardware profile (the fused optimizer kernel); `mixup`
    is a partial of timm's Mixup (soft targets, trained with soft-target cross-entropy);
    `preprocess` is the data's per-batch preprocessing (ImageDataModule.batch_preprocess).
    `self.lr` is the learning rate (Lightning's LR finder sets it). Logs train/*, val/*, test/*
    loss and top-1 accuracy (top-5 when there are more than 5 classes) and val/acc_best.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable | None,
        scheduler: Callable | None = None,
        label_smoothing: float = 0.0,
        mixup: Callable | None = None,
        optimizer_kwargs: dict | None = None,
        preprocess: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        # the data's per-batch preprocessing (xtune.data.preprocess: uint8 -> normalised float,
        # random erasing), run here because here is the device; None: batches come ready
        self.preprocess = preprocess
        self.optimizer_factory = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.lr = getattr(optimizer, "keywords", {}).get("lr")
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.mixup = mixup(num_classes=num_classes, label_smoothing=label_smoothing) if mixup else None
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            self.soft_criterion = SoftTargetCrossEntropy()
        self.top5 = num_classes > 5
        self.channels_last = False
        # Counters only: nothing is read back to the host during an epoch (a host read stalls a
        # GPU and cuts an XLA graph); a NaN loss is FiniteLoss's job.
        self.train_metrics = ClassificationTally(num_classes)
        self.val_metrics = ClassificationTally(num_classes)
        self.test_metrics = ClassificationTally(num_classes)
        self.val_acc_best = MaxMetric(nan_strategy="disable")
        # in checkpoints, so a resumed run (even mid-epoch) reports what an uninterrupted one would
        self.train_metrics.persistent(True)
        self.val_acc_best.persistent(True)

    def use_channels_last(self) -> None:
        """NHWC memory format for weights and batches (faster convolutions on tensor cores)."""
        self.channels_last = True
        self.backbone.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def _step(self, stage: str, batch, return_logits: bool = False):
        """The loss (and with `return_logits`, also the detached logits and the targets)."""
        images, targets = batch
        if self.preprocess is not None:
            images = self.preprocess(images, training=stage == "train")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if stage == "train" and self.mixup is not None:
            if images.shape[0] % 2:  # timm's Mixup mixes pairs
                images, targets = images[:-1], targets[:-1]
            mixed, soft_targets = self.mixup(images, targets)
            logits = self(mixed)
            loss = self.soft_criterion(logits, soft_targets)
            # train accuracy is measured against the dominant (original) label of each image
            self.train_metrics.update(loss, logits.detach(), targets)
            return loss
        logits = self(images)
        loss = self.criterion(logits, targets)
        # Metrics are only updated here and logged once per epoch (_log_epoch): every self.log
        # call costs Lightning about a millisecond of Python, which a fast step cannot afford.
        # update() only: calling a metric would also compute a per-batch value nobody reads.
        getattr(self, f"{stage}_metrics").update(loss, logits.detach(), targets)
        return (loss, logits.detach(), targets) if return_logits else loss

    def _log_epoch(self, stage: str) -> dict:
        """Compute (synchronised across processes), log and reset one stage's epoch metrics."""
        metric = getattr(self, f"{stage}_metrics")
        values = {f"{stage}/{name}": value for name, value in metric.compute().items()
                  if self.top5 or name in ("loss", "acc")}
        metric.reset()
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        return values

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step("train", batch)
        if self.global_step % self.trainer.log_every_n_steps == 0:  # Lightning's logging cadence
            self.log("train/loss_step", loss.detach())
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch, batch_idx: int) -> dict:
        # handed to callbacks as on_test_batch_end's `outputs` (xtune.evaluation_report)
        _, logits, targets = self._step("test", batch, return_logits=True)
        return {"logits": logits, "targets": targets}

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val")
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        lr = {} if self.lr is None else {"lr": self.lr}
        optimizer = self.optimizer_factory(self.backbone, **lr, **self.optimizer_kwargs)
        if self.scheduler_factory is None:
            # timm's schedulers apply each group's lr_scale (layer decay, backbone scale); without
            # one, apply it once here
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
            return optimizer
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        updates = max(int(self.trainer.estimated_stepping_batches) // epochs, 1)
        scheduler, _ = self.scheduler_factory(
            optimizer, num_epochs=epochs, updates_per_epoch=updates, step_on_epochs=False
        )
        if scheduler is None:  # sched: none
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The optimizer's kernel (fused, foreach) is this run's device choice, not the saved one's:
        # a run checkpointed with fused steps (CPU, CUDA) resumes on an XLA device, which has none.
        chosen = {**getattr(self.optimizer_factory, "keywords", {}), **self.optimizer_kwargs}
        for state in checkpoint.get("optimizer_states") or []:
            for group in state.get("param_groups") or []:
                for key in ("fused", "foreach"):
                    if key in group:
                        group[key] = chosen.get(key)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are stepped with the number of updates done so far; Lightning's LR
        # finder swaps in a torch scheduler of its own
        if hasattr(scheduler, "step_update"):
            scheduler.step_update(num_updates=self.global_step)
        else:
            scheduler.step()
