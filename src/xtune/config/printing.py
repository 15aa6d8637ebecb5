"""Print the resolved config as a rich tree (what lightning-hydra-template users expect)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

ORDER = ("data", "model", "optim", "scheduler", "trainer", "callbacks", "logger", "paths")


def config_tree(cfg: DictConfig, resolve: bool = True):
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in ORDER if f in cfg] + [f for f in cfg if f not in ORDER]
    for field in fields:
        branch = tree.add(field, style="bold", guide_style="dim")
        value = cfg[field]
        text = OmegaConf.to_yaml(value, resolve=resolve) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    return tree


def print_config_tree(cfg: DictConfig) -> None:
    import rich

    rich.print(config_tree(cfg))
