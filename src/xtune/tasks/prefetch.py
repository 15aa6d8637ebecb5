"""Download the pretrained weights a config needs into the local cache.

For clusters whose compute nodes are offline: run `xtune-prefetch model=vit` (or
`xtune-prefetch experiment=...`, or `-m model=resnet,vit`) on a login node with internet and
share the cache (HF_HOME) with the compute nodes.
"""

from __future__ import annotations

from omegaconf import DictConfig


def prefetch(cfg: DictConfig) -> str:
    from xtune.models.backbone import prefetch as fetch

    name = cfg.model.name
    path = fetch(name)
    print(f"{name}: {path}")
    return path
