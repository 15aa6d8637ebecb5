"""Objects from config nodes: Hydra's instantiate, with a wrong argument or target as one line.

Beside the config code and below the recipes (torchtune keeps its config.instantiate there too),
so every floor - tasks, checkpoints, models - calls down to it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from xtune.errors import XtuneConfigError, XtuneError


def build(node, group: str, **kwargs):
    """hydra.utils.instantiate, with a wrong argument or target reported as one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, XtuneError):
            raise cause from None
        if isinstance(cause, (TypeError, ValueError, ImportError, AttributeError, MisconfigurationException)):
            message = " ".join(str(cause).split())
            raise XtuneConfigError(f"{group}: {message}") from None
        if cause is None:  # Hydra could not even locate the target
            raise XtuneConfigError(f"{group}: {' '.join(str(error).split())}") from None
        raise


def build_all(node: DictConfig | None, group: str) -> list:
    """Instantiate each `_target_` entry of a group such as callbacks or logger; a factory that
    returns None (W&B on a machine without it set up) adds nothing."""
    if not node:
        return []
    built = (build(entry, f"{group}.{key}") for key, entry in node.items() if entry and "_target_" in entry)
    return [item for item in built if item is not None]
