"""Every config file composes, and every _target_ in it points at something real."""

from pathlib import Path

import pytest
from hydra.utils import get_method, get_class
from omegaconf import OmegaConf

from helpers import compose
from xtune.config import CONFIG_DIR

CONFIGS = Path(CONFIG_DIR)
PRIMARY = {"train", "eval", "prefetch"}
# groups the train config composes (hydra/ is Hydra's own; local/ holds the user's site file)
GROUP_OPTIONS = sorted(
    (path.parent.relative_to(CONFIGS).as_posix(), path.stem)
    for path in CONFIGS.rglob("*.yaml")
    if path.parent != CONFIGS and path.parts[-2] not in ("hydra", "local")
)


def test_groups_are_all_found():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert {"model", "data", "trainer", "optim", "scheduler", "logger", "callbacks", "paths",
            "debug", "experiment"} <= groups
    assert {p.stem for p in (CONFIGS / "model").glob("*.yaml")} >= {
        "resnet", "convnext", "vit", "efficientnet", "mobilenet", "tiny"}
    assert {p.stem for p in (CONFIGS / "data").glob("*.yaml")} >= {
        "digits", "imagefolder", "mnist", "cifar10", "synthetic"}


def _targets(node, found):
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for value in node.values():
            _targets(value, found)
    elif isinstance(node, list):
        for value in node:
            _targets(value, found)
    return found


def _check_targets(cfg):
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    for target in _targets(container, []):
        try:
            get_class(target)
        except Exception:  # noqa: BLE001 - functions are not classes
            assert callable(get_method(target)), target


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    if group == "hparams_search":
        pytest.importorskip("optuna", reason="the [optuna] extra is not installed")
    overrides = [f"{group}={option}"]
    if group in ("data",) and option == "imagefolder":
        overrides.append(f"data.root={tmp_path}")
    if group == "callbacks" and option not in ("default", "none"):
        overrides = [f"callbacks={option}"]
    cfg = compose("train", overrides, output_dir=tmp_path)
    # resolving every interpolation catches typos in ${...}
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["task_name"] in ("train", "debug")
    _check_targets(cfg)


@pytest.mark.parametrize("name", sorted(PRIMARY))
def test_primary_configs_compose(name, tmp_path):
    overrides = ["ckpt_path=/some/file.ckpt"] if name == "eval" else []
    cfg = compose(name, overrides, output_dir=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)
    _check_targets(cfg)
    assert cfg.task_name == name


def test_quickstart_is_offline_and_tiny(tmp_path):
    cfg = compose("train", ["experiment=quickstart"], output_dir=tmp_path)
    assert cfg.model.name == "test_resnet"
    assert cfg.model.pretrained is False
    assert cfg.data.source._target_ == "xtune.data.sources.digits"


def test_user_facing_names_exist(tmp_path):
    cfg = compose("train", [], output_dir=tmp_path)
    for key in ("model.name", "model.pretrained", "model.weights", "data.root", "data.batch_size",
                "data.image_size", "optim.lr", "trainer.max_epochs", "trainer.precision",
                "trainer.deterministic", "seed", "ckpt_path"):
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
    assert set(cfg.logger) == {"csv", "wandb"}
    assert cfg.model.name == "resnet50"
