"""Models: timm backbones (backbone.py, weights.py) wrapped in a LightningModule (module.py)."""

from xtune.models.backbone import create_backbone

__all__ = ["create_backbone"]
