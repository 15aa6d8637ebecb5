"""xtune-export: a checkpoint as a timm-loadable model (safetensors + config.json)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xtune.config.validate import validate_eval


def export(cfg: DictConfig) -> str:
    validate_eval(cfg)

    from xtune.checkpoint import module_from_checkpoint, read_checkpoint
    from xtune.models.export import export_model

    checkpoint = read_checkpoint(cfg.ckpt_path)
    info = checkpoint["xtune"]
    module, strategy = module_from_checkpoint(checkpoint, OmegaConf.create(info["config"]), compile=False)
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    out_dir = Path(cfg.export_dir) if cfg.get("export_dir") else ckpt.parent.parent / "export"
    path = export_model(strategy.export(module.backbone), out_dir, info["classes"], info["data_config"])
    print(f"exported {ckpt} -> {path} (+ config.json); load it with model.weights={out_dir}")
    return str(path)
