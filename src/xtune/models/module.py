"""ClassificationModule: a timm backbone trained with cross-entropy, measured with torchmetrics."""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy


class ClassificationModule(pl.LightningModule):
    """Fine-tunes `backbone` (a timm model whose head has `num_classes` outputs).

    `optimizer(model) -> Optimizer` and `scheduler(optimizer, num_epochs, updates_per_epoch)` are
    partials of timm's `create_optimizer_v2` / `create_scheduler_v2` (configs/optim,
    configs/scheduler); the scheduler is stepped per optimizer update. Logs train/*, val/*,
    test/* loss and top-1 accuracy (top-5 when there are more than 5 classes) and val/acc_best.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.top5 = num_classes > 5
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro"))
            if self.top5:
                setattr(self, f"{stage}_acc_top5", MulticlassAccuracy(num_classes, top_k=5, average="micro"))
        self.val_acc_best = MaxMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def _step(self, stage: str, batch) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        # weighted by batch size: the epoch loss is the per-image mean whatever the batch size
        getattr(self, f"{stage}_loss")(loss.detach(), weight=targets.shape[0])
        getattr(self, f"{stage}_acc")(logits.detach(), targets)
        metrics = {f"{stage}/loss": getattr(self, f"{stage}_loss"), f"{stage}/acc": getattr(self, f"{stage}_acc")}
        if self.top5:
            getattr(self, f"{stage}_acc_top5")(logits.detach(), targets)
            metrics[f"{stage}/acc_top5"] = getattr(self, f"{stage}_acc_top5")
        on_step = stage == "train"
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "test")
        if on_step:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=False)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step("test", batch)

    def on_train_start(self) -> None:
        # the sanity-check validation must not count as a best score
        self.val_acc_best.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.backbone)
        if self.scheduler_factory is None:
            return optimizer
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        updates = max(int(self.trainer.estimated_stepping_batches) // epochs, 1)
        scheduler, _ = self.scheduler_factory(
            optimizer, num_epochs=epochs, updates_per_epoch=updates, step_on_epochs=False
        )
        if scheduler is None:  # sched: none
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are stepped with the number of updates done so far
        scheduler.step_update(num_updates=self.global_step)

    def parameter_counts(self) -> dict:
        total = sum(p.numel() for p in self.backbone.parameters())
        trainable = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable}
