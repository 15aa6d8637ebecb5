"""What a test pass leaves behind besides test/acc: per-class scores, the confusion matrix, mistakes.

EvaluationReport (a Lightning callback) counts the test predictions into a torchmetrics
MulticlassConfusionMatrix and, at the end of the pass, writes into the run directory:

- eval_report.json: classes, per-class precision / recall / F1 / support, the confusion matrix
  (rows: true class, columns: predicted), the most confused pairs and the overall accuracy;
- confusion_matrix.png, and misclassified.png (a grid of wrongly classified test images);
- the same figures and a per-class table to W&B, when a WandbLogger is among the loggers.

Written here because neither Lightning nor torchmetrics writes such a report; torchmetrics'
confusion matrix holds the counts, and the scores, the pairs and the figures are read off it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from xtune.atomic import atomic_path, write_text

log = logging.getLogger("xtune")


class ConfusionCounts(MulticlassConfusionMatrix):
    """torchmetrics' confusion matrix, counted with one scatter-add per batch.

    Its own update counts with torch.bincount, which reads a value back to the host on CUDA and,
    with deterministic algorithms or torch_xla installed, builds a batch x classes² tensor (gigabytes
    for 1000 classes); index_put_ does neither. Takes class indices, not logits.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        flat = target.long() * self.num_classes + preds.long()
        ones = torch.ones_like(flat, dtype=self.confmat.dtype)
        self.confmat.view(-1).index_put_((flat,), ones, accumulate=True)


class EvaluationReport(pl.Callback):
    """Per-class report of every `trainer.test(...)`, written on rank zero into `run_dir`.

    `classes`: class names (default: the datamodule's `classes`, else indices). `mean` / `std`:
    the normalisation of the test images (default: the datamodule's timm `data_config`), undone
    for the misclassified grid. `max_images`: size of that grid. The confusion matrix shows counts
    in its cells up to `annotate_up_to` classes and colours rows by the fraction of their true
    class when `normalize_rows`. Needs the module's test_step to return
    `{"logits": ..., "targets": ...}` (ClassificationModule does).

    Cost per test batch: a top-1 and a scatter-add on the device; until the grid is full, also one
    small copy of the labels to the host (and of the wrong images, once); nothing after that until
    the end of the pass, when the matrix is summed across processes (Lightning's strategy). Under
    DDP the grid shows rank zero's mistakes, and "index" is the position in rank zero's batches.

    After a test pass, `per_class` is {class: {precision, recall, f1, support}} and `summary()`
    the JSON-ready part for summary.json; both are empty / None before one.
    """

    def __init__(self, run_dir: str | Path, classes: list | None = None, mean=None, std=None,
                 max_images: int = 32, annotate_up_to: int = 20, normalize_rows: bool = True,
                 top_confused: int = 10, log_to_wandb: bool = True):
        self.run_dir = Path(run_dir)
        self.classes = [str(name) for name in classes] if classes is not None else None
        self.mean, self.std = mean, std
        self.max_images, self.annotate_up_to, self.top_confused = max_images, annotate_up_to, top_confused
        self.normalize_rows, self.log_to_wandb = normalize_rows, log_to_wandb
        self.result: dict | None = None
        self.files: dict = {}
        self._confusion: ConfusionCounts | None = None
        self._wrong: list[dict] = []  # up to max_images: {"index", "true", "predicted", "image"}
        self._seen = 0  # test images counted by this process in this pass
        self._warned = False

    @property
    def per_class(self) -> dict:
        return self.result["per_class"] if self.result else {}

    def summary(self) -> dict | None:
        """accuracy, per-class scores, most confused pairs and the files written (None before a test)."""
        if self.result is None:
            return None
        keys = ("accuracy", "num_samples", "macro", "per_class", "most_confused")
        return {**{key: self.result[key] for key in keys}, "files": dict(self.files)}

    # -- collecting ------------------------------------------------------------------------------

    def on_test_start(self, trainer, pl_module) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        num_classes = getattr(pl_module, "num_classes", None) or len(self.classes or [])
        classes = self.classes or getattr(datamodule, "classes", None) or [str(i) for i in range(num_classes)]
        if len(classes) != num_classes:
            raise ValueError(f"EvaluationReport: {len(classes)} class names for a {num_classes}-class model")
        self._classes = [str(name) for name in classes]
        data_config = getattr(datamodule, "data_config", None) or {}
        self._mean = self.mean if self.mean is not None else data_config.get("mean", (0.0,))
        self._std = self.std if self.std is not None else data_config.get("std", (1.0,))
        # summed across processes by Lightning's strategy (DDP and XLA alike), not by torchmetrics,
        # whose sync only knows torch.distributed
        self._confusion = ConfusionCounts(num_classes, validate_args=False, sync_on_compute=False)
        self._confusion.to(pl_module.device)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._confusion.reset()
        self._confusion.to(pl_module.device)
        self._wrong, self._seen = [], 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, dict) or "logits" not in outputs:
            if not self._warned:
                log.warning("EvaluationReport: test_step returned no logits; no evaluation report")
                self._warned = True
            return
        logits, targets = outputs["logits"], outputs.get("targets", batch[1])
        # top-1 as the module's metric counts it (ClassificationTally takes topk(k)[:, 0]): on tied
        # logits argmax may pick another class, and the report's accuracy must equal test/acc
        k = min(getattr(getattr(pl_module, "test_metrics", None), "top_k", 1), logits.shape[1])
        preds = logits.topk(k, dim=1).indices[:, 0]
        self._confusion.update(preds, targets)  # on the device: nothing read back here
        offset, self._seen = self._seen, self._seen + targets.shape[0]
        need = self.max_images - len(self._wrong)
        if need > 0:  # until the grid is full: labels, then the wrong images, copied once
            labels = torch.stack((targets.long(), preds.long())).cpu()
            picked = (labels[0] != labels[1]).nonzero()[:need, 0]
            if len(picked):
                images = batch[0].index_select(0, picked.to(batch[0].device)).detach().cpu()
                for row, (true, predicted), image in zip(picked.tolist(), labels[:, picked].t().tolist(),
                                                         self._denormalise(images)):
                    self._wrong.append({"index": offset + row, "true": self._classes[true],
                                        "predicted": self._classes[predicted], "image": image})

    def _denormalise(self, images: torch.Tensor):
        """NCHW (any memory format) -> uint8 HWC arrays for plotting: uint8 batches (xtune's
        loaders: normalised on the device, inside the module) as they are, float ones de-normalised."""
        if images.dtype == torch.uint8:
            return [image.permute(1, 2, 0).contiguous().numpy() for image in images]
        images = images.float()
        channels = images.shape[1]
        mean = torch.as_tensor(self._mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(self._std, dtype=torch.float32).flatten()
        mean, std = [(t[:channels] if t.numel() >= channels else t[:1]).view(1, -1, 1, 1) for t in (mean, std)]
        images = (images * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        return [image.permute(1, 2, 0).contiguous().numpy() for image in images]

    # -- reporting -------------------------------------------------------------------------------

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self._seen == 0:  # no batch, or no logits
            return
        counts = trainer.strategy.reduce(self._confusion.confmat.clone(), reduce_op="sum")
        self.result = report_from_counts(counts.cpu(), self._classes, self.top_confused)
        self.result["misclassified"] = [{k: v for k, v in item.items() if k != "image"} for item in self._wrong]
        if not trainer.is_global_zero:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.files = {"report": str(self.run_dir / "eval_report.json")}
        figures = {
            "confusion_matrix": lambda path: plot_confusion(counts.cpu(), self._classes, path, self.annotate_up_to,
                                                            self.normalize_rows, self.result["accuracy"]),
            "misclassified": lambda path: plot_misclassified(self._wrong, path) if self._wrong else None,
        }
        for name, plot in figures.items():
            (self.run_dir / f"{name}.png").unlink(missing_ok=True)  # never a stale figure of an earlier pass
            try:  # a figure is not worth failing a finished run for
                if plot(self.run_dir / f"{name}.png") is not None:
                    self.files[name] = str(self.run_dir / f"{name}.png")
            except Exception as error:  # noqa: BLE001
                log.warning("EvaluationReport: could not draw %s.png: %s", name, error)
        write_report(self.run_dir / "eval_report.json", self.result)
        if self.log_to_wandb:
            self._log_wandb(trainer)

    def _log_wandb(self, trainer) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            try:
                import wandb

                rows = [[name, s["precision"], s["recall"], s["f1"], s["support"]]
                        for name, s in self.result["per_class"].items()]
                payload = {"test/per_class": wandb.Table(columns=["class", "precision", "recall", "f1", "support"],
                                                         data=rows)}
                for name in ("confusion_matrix", "misclassified"):
                    if name in self.files:
                        payload[f"test/{name}"] = wandb.Image(self.files[name])
                logger.log_metrics(payload, step=trainer.global_step)
            except Exception as error:  # noqa: BLE001 - W&B trouble never fails the run
                log.warning("EvaluationReport: could not log to W&B: %s", error)


def report_from_counts(counts: torch.Tensor, classes: list[str], top_confused: int = 10) -> dict:
    """Per-class scores, accuracy and most confused pairs of a confusion matrix (rows: true class).

    A class never predicted has precision 0, one never present recall 0 (torchmetrics' default).
    """
    counts = counts.long()
    hits = counts.diagonal().double()
    support, predicted = counts.sum(1).double(), counts.sum(0).double()
    recall = torch.where(support > 0, hits / support.clamp(min=1), torch.zeros_like(hits))
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), torch.zeros_like(hits))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(hits))
    total = int(counts.sum())
    # float32 correct / count, exactly as ClassificationTally computes test/acc
    accuracy = float(torch.tensor(float(hits.sum()), dtype=torch.float32) / max(total, 1))
    scores = zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())
    per_class = {name: {"precision": p, "recall": r, "f1": f, "support": int(s)} for name, p, r, f, s in scores}
    off = counts.clone()
    off.fill_diagonal_(0)
    pairs = sorted(((-int(off[i, j]), i, j) for i, j in off.nonzero().tolist()))[:top_confused]
    return {
        "classes": list(classes),
        "num_samples": total,
        "accuracy": accuracy,
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "per_class": per_class,
        "most_confused": [{"true": classes[i], "predicted": classes[j], "count": -n} for n, i, j in pairs],
        "confusion_matrix": counts.tolist(),
    }


def write_report(path: Path, report: dict) -> None:
    """Indented JSON with one line per confusion-matrix row, written atomically."""
    rest = {key: value for key, value in report.items() if key != "confusion_matrix"}
    rows = ",\n    ".join(json.dumps(row) for row in report["confusion_matrix"])
    text = json.dumps(rest, indent=2)[:-2] + f',\n  "confusion_matrix": [\n    {rows}\n  ]\n}}\n'
    write_text(path, text)


def plot_confusion(counts: torch.Tensor, classes: list[str], path: Path, annotate_up_to: int = 20,
                   normalize_rows: bool = True, accuracy: float | None = None) -> Path:
    """The confusion matrix with class names on both axes (index ticks beyond 100 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    values = counts.double()
    if normalize_rows:
        values = values / values.sum(1, keepdim=True).clamp(min=1)
    side = min(max(6.0, 0.22 * n + 3), 30.0)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    shown = axis.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize_rows else None)
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04, shrink=min(1.0, 8 / side),
                    label="fraction of the true class" if normalize_rows else "images")
    labels_in = 0.25  # inches the tick labels take beside and below the matrix
    if n <= 100:
        size = max(4.0, min(10.0, 400 / n))
        axis.set_xticks(range(n), [name[:24] for name in classes], rotation=90, fontsize=size)
        axis.set_yticks(range(n), [name[:24] for name in classes], fontsize=size)
        labels_in = max(len(name[:24]) for name in classes) * 0.6 * size / 72 + 0.1
    if n <= annotate_up_to:
        top = float(values.max()) or 1.0
        for i in range(n):
            for j in range(n):
                axis.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                          color="white" if float(values[i, j]) > 0.5 * top else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    total = int(counts.sum())
    title = f"test confusion matrix: {total} images"
    axis.set_title(title if accuracy is None else f"{title}, accuracy {accuracy:.2%}")
    # margins from the labels' length (tight_layout would measure them by drawing the figure
    # once more: ~40 % of this function's time at the end of every test pass)
    margin_in = 0.45 + labels_in  # axis label + tick labels, in inches; the figure is side + 1.5 wide
    width = side + 1.5  # the colorbar's ticks and label need ~0.9 in on the right
    figure.subplots_adjust(left=margin_in / width, bottom=margin_in / side, right=1 - 0.9 / width, top=1 - 0.45 / side)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


#: the misclassified grid: tile side (px), gap, caption and heading heights
CELL, GAP, CAPTION, HEADING = 112, 6, 30, 24


def plot_misclassified(items: list[dict], path: Path, columns: int = 8) -> Path:
    """A grid of misclassified images, each captioned with its true and (in red) predicted class.

    Pasted tile by tile with Pillow: ~0.07 s, where a matplotlib figure with one axes per image
    took ~2.5 s of every test pass. An image is enlarged by a whole factor (nearest neighbour, so a
    28-pixel image keeps its pixels) or shrunk to fit the tile.
    """
    from PIL import Image, ImageDraw

    columns = min(columns, len(items))
    rows = math.ceil(len(items) / columns)
    canvas = Image.new("RGB", (GAP + columns * (CELL + GAP), HEADING + rows * (CELL + CAPTION + GAP)), "white")
    draw, font = ImageDraw.Draw(canvas), _font(11)
    draw.text((GAP, 5), f"misclassified test images (first {len(items)}): true, predicted", fill="black",
              font=_font(13))
    for position, item in enumerate(items):
        row, column = divmod(position, columns)
        x, y = GAP + column * (CELL + GAP), HEADING + row * (CELL + CAPTION + GAP)
        tile = _tile(item["image"])
        canvas.paste(tile, (x + (CELL - tile.width) // 2, y + (CELL - tile.height) // 2))
        draw.text((x, y + CELL + 2), item["true"][:18], fill="black", font=font)
        draw.text((x, y + CELL + 15), item["predicted"][:18], fill=(190, 20, 20), font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _tile(image):
    """HWC uint8 (1, 3 or 4 channels) -> an RGB PIL image at most CELL pixels on its longer side."""
    from PIL import Image

    tile = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image[..., :3]).convert("RGB")
    factor = CELL / max(tile.size)
    if factor >= 1:
        whole = int(factor)
        return tile.resize((tile.width * whole, tile.height * whole), Image.NEAREST)
    return tile.resize((max(1, round(tile.width * factor)), max(1, round(tile.height * factor))), Image.BILINEAR)


def _font(size: int):
    """Pillow's own scalable font (Pillow >= 10.1), else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()
