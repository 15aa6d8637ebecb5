"""Export a fine-tuned model as timm's own format: model.safetensors + config.json.

timm.models.save_for_hf writes the weights and a config.json holding the architecture, the
class names (label_names) and the preprocessing (pretrained_cfg). Load it back with
`model.weights=EXPORT_DIR` (or EXPORT_DIR/model.safetensors), or in plain timm with
`timm.create_model("local-dir:EXPORT_DIR", pretrained=True)`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

PREPROCESSING = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def export_model(model: nn.Module, out_dir: Path, classes: list, data_config: dict) -> Path:
    """Write `model` (a plain timm model) to out_dir; return the weights file."""
    from timm.models import save_for_hf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocessing = {key: tuple(value) if isinstance(value, list) else value
                     for key, value in (data_config or {}).items() if key in PREPROCESSING}
    save_for_hf(model.eval(), str(out_dir), model_config={"label_names": list(classes)},
                data_config=preprocessing, safe_serialization=True)
    readable_like_user_files(out_dir.iterdir())
    return out_dir / "model.safetensors"


def readable_like_user_files(paths) -> None:
    """safetensors writes 0600 files (a temporary file renamed into place); give them the mode any
    file the user writes gets (0666 minus the umask), so a shared export is readable."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        if Path(path).is_file():
            os.chmod(path, 0o666 & ~umask)
