"""Reading xtune checkpoints: what they hold and whether they fit the run at hand."""

from __future__ import annotations

from pathlib import Path

from xtune.errors import XtuneConfigError


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint written by train.py (tensors memory-mapped, on CPU).

    Raises one clear XtuneConfigError for files that are not xtune checkpoints.
    """
    import torch

    file = Path(path).expanduser()
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise XtuneConfigError(
            f"ckpt_path={path} is not a checkpoint torch can read ({reason[:160]}); pass a .ckpt "
            "written by train.py, e.g. RUN/checkpoints/last.ckpt"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "xtune" not in checkpoint:
        raise XtuneConfigError(
            f"ckpt_path={path} is not an xtune checkpoint (no state_dict/xtune entries); pass a "
            ".ckpt written by train.py, e.g. RUN/checkpoints/last.ckpt"
        )
    return checkpoint


def check_resume_fits(checkpoint: dict, path, model_name: str, classes: list) -> None:
    """Refuse to resume a run whose model or classes differ from this one's."""
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


def module_from_checkpoint(checkpoint: dict, run, compile: bool | None = None):
    """Rebuild the ClassificationModule a checkpoint was saved from, its weights loaded.

    `run` is the training config stored in the checkpoint (possibly with overrides). The
    backbone is built without asking for pretrained weights (they come from the checkpoint),
    and the fine-tuning strategy prepares it the same way as in training (LoRA adapters).
    """
    from xtune.models.finetune import Strategy
    from xtune.models.module import ClassificationModule
    from xtune.tasks.common import build

    classes = list(checkpoint["xtune"]["classes"])
    strategy = build(run.finetune, "finetune") if run.get("finetune") else Strategy()
    overrides = {"pretrained": False, "weights": None}
    if compile is not None:
        overrides["compile"] = compile
    backbone = build(run.model, "model")(num_classes=len(classes), **overrides)
    backbone = strategy.prepare(backbone)
    module = ClassificationModule(backbone, len(classes), optimizer=None)
    module.load_state_dict(checkpoint["state_dict"])
    return module, strategy
