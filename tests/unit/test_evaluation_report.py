"""EvaluationReport: per-class scores, confusion matrix and mistakes of a real test pass."""

import json
import logging

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from xtune.evaluation_report import EvaluationReport, plot_confusion, report_from_counts
from xtune.models.module import ClassificationModule

CLASSES = ["cat", "dog", "fox"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
PNG = b"\x89PNG\r\n\x1a\n"


def make_data(count=50, size=32, seed=0):
    """Images in [0, 1] (class c is brighter in channel c), normalised with MEAN / STD."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(count) % 3
    raw = torch.rand(count, 3, size, size, generator=generator) * 0.6
    raw[torch.arange(count), targets] += 0.4
    normalised = (raw - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return raw, normalised, targets


def channels_last_batches(samples):
    images, targets = zip(*samples)
    return torch.stack(images).contiguous(memory_format=torch.channels_last), torch.stack(targets)


def make_module(seed=0):
    torch.manual_seed(seed)
    return ClassificationModule(timm.create_model("test_resnet", num_classes=3), num_classes=3, optimizer=None)


def run_test(module, normalised, targets, callback, logger=False, batch_size=16):
    loader = DataLoader(TensorDataset(normalised, targets), batch_size=batch_size, collate_fn=channels_last_batches)
    trainer = pl.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[callback])
    trainer.test(module, dataloaders=loader, verbose=False)
    return trainer


def own_predictions(module, normalised):
    module.eval()
    with torch.no_grad():
        return module(normalised).argmax(1).numpy()


@pytest.fixture(scope="module")
def data():
    return make_data()


def test_report_matches_an_independent_computation(tmp_path, data):
    raw, normalised, targets = data
    module = make_module(seed=2)  # a random model that predicts several classes, right and wrong
    module.use_channels_last()
    report = EvaluationReport(tmp_path / "run", classes=CLASSES, mean=MEAN, std=STD, max_images=4)
    trainer = run_test(module, normalised, targets, report)

    preds, truth = own_predictions(module, normalised), targets.numpy()
    expected = np.zeros((3, 3), dtype=int)
    np.add.at(expected, (truth, preds), 1)
    wrong = np.flatnonzero(preds != truth)
    assert len(wrong) > 4 and len(set(preds)) > 1 and (preds == truth).any()

    run = tmp_path / "run"
    saved = json.loads((run / "eval_report.json").read_text())
    matrix = np.array(saved["confusion_matrix"])
    assert (matrix == expected).all()
    assert matrix.sum() == len(targets) == saved["num_samples"]
    accuracy = float(trainer.callback_metrics["test/acc"])
    assert saved["accuracy"] == accuracy == report.summary()["accuracy"]
    assert np.float32(np.trace(matrix)) / np.float32(matrix.sum()) == np.float32(accuracy)

    assert saved["classes"] == CLASSES and list(saved["per_class"]) == CLASSES
    for index, name in enumerate(CLASSES):
        scores = saved["per_class"][name]
        assert scores["support"] == int((truth == index).sum())
        assert scores["recall"] == ((preds == index) & (truth == index)).sum() / (truth == index).sum()
        predicted = (preds == index).sum()
        assert scores["precision"] == (((preds == index) & (truth == index)).sum() / predicted if predicted else 0.0)
    assert report.per_class == saved["per_class"] == report.summary()["per_class"]

    pairs = saved["most_confused"]
    assert pairs and len(pairs) == min(10, int((expected - np.diag(np.diag(expected)) > 0).sum()))
    assert [p["count"] for p in pairs] == sorted((p["count"] for p in pairs), reverse=True)
    for pair in pairs:
        assert pair["true"] != pair["predicted"]
        assert pair["count"] == expected[CLASSES.index(pair["true"]), CLASSES.index(pair["predicted"])]

    # the grid: the first 4 mistakes in test order, de-normalised back to the original pixels
    assert [item["index"] for item in saved["misclassified"]] == wrong[:4].tolist()
    assert [(item["true"], item["predicted"]) for item in saved["misclassified"]] == \
        [(CLASSES[truth[i]], CLASSES[preds[i]]) for i in wrong[:4]]
    for item in report._wrong:
        original = raw[item["index"]].permute(1, 2, 0).numpy() * 255
        assert item["image"].shape == (32, 32, 3)
        assert np.abs(item["image"].astype(float) - original).max() <= 1.0
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (run / name).read_bytes()[:8] == PNG
    assert report.summary()["files"]["misclassified"] == str(run / "misclassified.png")


def test_grid_holds_every_mistake_when_there_are_fewer_than_its_size(tmp_path, data):
    _, normalised, targets = data
    module = make_module(seed=1)
    report = EvaluationReport(tmp_path, max_images=1000)  # class names and stats: none given
    run_test(module, normalised, targets, report, batch_size=7)
    wrong = np.flatnonzero(own_predictions(module, normalised) != targets.numpy())
    saved = json.loads((tmp_path / "eval_report.json").read_text())
    assert [item["index"] for item in saved["misclassified"]] == wrong.tolist()
    assert saved["classes"] == ["0", "1", "2"]
    assert (tmp_path / "misclassified.png").read_bytes()[:8] == PNG


def test_the_grid_shows_each_mistake_pixel_for_pixel(tmp_path):
    from PIL import Image

    from xtune.evaluation_report import CAPTION, CELL, GAP, HEADING, plot_misclassified

    rng = np.random.default_rng(0)
    items = [{"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "true": "Shirt", "predicted": "Coat"}
             for _ in range(10)]
    items[9]["image"] = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    plot_misclassified(items, tmp_path / "grid.png", columns=8)
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert grid.shape == (HEADING + 2 * (CELL + CAPTION + GAP), GAP + 8 * (CELL + GAP), 3)
    factor = CELL // 28  # enlarged by a whole factor: every pixel of the image is there
    margin = (CELL - 28 * factor) // 2
    for position in (0, 7, 9):
        row, column = divmod(position, 8)
        y, x = HEADING + row * (CELL + CAPTION + GAP) + margin, GAP + column * (CELL + GAP) + margin
        tile = grid[y:y + 28 * factor:factor, x:x + 28 * factor:factor]
        image = items[position]["image"]
        assert np.array_equal(tile, np.broadcast_to(image, (28, 28, 3)) if image.shape[-1] == 1 else image)


def test_scores_of_a_known_matrix():
    counts = torch.tensor([[5, 1, 0, 0],
                           [2, 0, 0, 3],   # never predicted right
                           [0, 0, 0, 0],   # no support
                           [0, 3, 0, 4]])
    report = report_from_counts(counts, ["a", "b", "c", "d"], top_confused=3)
    a, b, c, d = (report["per_class"][k] for k in "abcd")
    assert a == {"precision": 5 / 7, "recall": 5 / 6, "f1": pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)),
                 "support": 6}
    assert b == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 5}
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert d["recall"] == 4 / 7 and d["precision"] == 4 / 7
    assert report["accuracy"] == float(np.float32(9) / np.float32(18))
    # by count, then by (true, predicted) order
    assert report["most_confused"] == [{"true": "b", "predicted": "d", "count": 3},
                                       {"true": "d", "predicted": "b", "count": 3},
                                       {"true": "b", "predicted": "a", "count": 2}]


@pytest.mark.parametrize("classes", [12, 120])
def test_confusion_plot_for_few_and_many_classes(tmp_path, classes):
    counts = torch.randint(0, 5, (classes, classes))
    names = [f"class_{i}" for i in range(classes)]
    path = plot_confusion(counts, names, tmp_path / "cm.png", normalize_rows=classes > 20)
    assert path.read_bytes()[:8] == PNG


def test_wandb_offline_gets_the_table_and_images(tmp_path, monkeypatch, data):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _, normalised, targets = data
    logger = WandbLogger(save_dir=str(tmp_path), mode="offline")
    report = EvaluationReport(tmp_path / "run", classes=CLASSES, mean=MEAN, std=STD)
    try:
        run_test(make_module(), normalised, targets, report, logger=logger)
    finally:
        wandb.finish()
        wandb.teardown()  # waits for the W&B service to write out the run file
    [log] = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    content = log.read_bytes()
    for key in (b"test/per_class", b"test/confusion_matrix", b"test/misclassified", b"table-file"):
        assert key in content, key
    media = log.parent / "files" / "media"
    [table] = list(media.glob("table/test/per_class_*.table.json"))
    table = json.loads(table.read_text())
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert table["data"] == [[name, *scores.values()] for name, scores in report.per_class.items()]
    for name in ("confusion_matrix", "misclassified"):
        [image] = list(media.glob(f"images/test/{name}_*.png"))
        assert image.read_bytes() == (tmp_path / "run" / f"{name}.png").read_bytes()


def test_a_failing_wandb_only_warns(tmp_path, caplog, data):
    from pytorch_lightning.loggers import WandbLogger

    class BrokenWandb(WandbLogger):
        def log_hyperparams(self, params):
            pass

        def log_metrics(self, metrics, step=None):
            if "test/per_class" in metrics:
                raise RuntimeError("W&B is down")

    _, normalised, targets = data
    report = EvaluationReport(tmp_path, classes=CLASSES, mean=MEAN, std=STD)
    with caplog.at_level(logging.WARNING, logger="xtune"):
        trainer = run_test(make_module(), normalised, targets, report, logger=BrokenWandb(mode="disabled"))
    assert "could not log to W&B: W&B is down" in caplog.text
    saved = json.loads((tmp_path / "eval_report.json").read_text())
    assert saved["accuracy"] == float(trainer.callback_metrics["test/acc"])
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == PNG
