"""Reading xtune checkpoints: what they hold and whether they fit the run at hand."""

from __future__ import annotations

from pathlib import Path

from xtune.errors import XtuneConfigError


def first_sentence(error: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for a paragraph)."""
    text = " ".join(str(error).split()) or type(error).__name__
    end = text.find(". ")
    return text[: end + 1] if 0 < end < 300 else text[:300]


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint written by train.py (tensors memory-mapped, on CPU).

    Raises one clear XtuneConfigError for files that are not xtune checkpoints.
    """
    import torch

    file = Path(path).expanduser()
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        raise XtuneConfigError(
            f"ckpt_path={path} is not a checkpoint torch can read ({first_sentence(error)}); it may be "
            "truncated or another kind of file: pass a .ckpt written by train.py, e.g. RUN/checkpoints/last.ckpt"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "xtune" not in checkpoint:
        raise XtuneConfigError(
            f"ckpt_path={path} is not an xtune checkpoint (no state_dict/xtune entries); pass a "
            ".ckpt written by train.py, e.g. RUN/checkpoints/last.ckpt"
        )
    return checkpoint


def check_resume_fits(checkpoint: dict, path, model_name: str, classes: list, data: dict | None = None) -> None:
    """Refuse to resume a run whose model, classes or data differ from this one's.

    `data` is this run's data fingerprint (classes, split sizes, content hash); checkpoints
    written before xtune stored one are checked on classes only.
    """
    stored = checkpoint["xtune"]
    stored_name = stored["config"]["model"]["name"]
    if stored_name != model_name:
        raise XtuneConfigError(
            f"ckpt_path={path} was trained with model.name={stored_name}, this run builds "
            f"model.name={model_name}; pass model.name={stored_name} to resume it"
        )
    if list(stored["classes"]) != list(classes):
        raise XtuneConfigError(
            f"ckpt_path={path} was trained on {len(stored['classes'])} classes "
            f"{stored['classes'][:5]}..., this data has {len(classes)} {list(classes)[:5]}...; "
            "resume on the same data"
        )
    stored_data = stored.get("data")
    if data and stored_data and stored_data.get("content") != data.get("content"):
        sizes = [f"{name} {stored_data['sizes'].get(name)} -> {count}" for name, count in data["sizes"].items()
                 if stored_data["sizes"].get(name) != count]
        change = f"split sizes changed ({', '.join(sizes)})" if sizes else "the files or labels changed (same sizes)"
        raise XtuneConfigError(
            f"ckpt_path={path} was trained on other data: {change}; resuming would continue on data the "
            "run never saw - restore the data, or start a new run (another run_name, or resume=never)"
        )


def module_from_checkpoint(checkpoint: dict, run, compile: bool | None = None, path=None):
    """Rebuild the ClassificationModule a checkpoint was saved from, its weights loaded.

    `run` is the training config stored in the checkpoint (possibly with overrides). The
    backbone is built without asking for pretrained weights (they come from the checkpoint),
    and the fine-tuning strategy prepares it the same way as in training (LoRA adapters).
    """
    from xtune.models.finetune import Strategy
    from xtune.models.module import ClassificationModule
    from xtune.config.instantiate import build

    classes = list(checkpoint["xtune"]["classes"])
    strategy = build(run.finetune, "finetune") if run.get("finetune") else Strategy()
    overrides = {"pretrained": False, "weights": None}
    if compile is not None:
        overrides["compile"] = compile
    backbone = build(run.model, "model")(num_classes=len(classes), **overrides)
    backbone = strategy.prepare(backbone)
    module = ClassificationModule(backbone, len(classes), optimizer=None)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # torch lists every key: the first reason is enough
        stored = checkpoint["xtune"]["config"]["model"]["name"]
        hint = (f"it holds a {stored}, not a {run.model.name}: drop model.name (the checkpoint's model is used)"
                if stored != run.model.name else "it does not match the model its config describes")
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), "")
        raise XtuneConfigError(f"ckpt_path={path or 'the checkpoint'} cannot be loaded: {hint} ({first[:200]})") from None
    return module, strategy
