"""Nonsense values are refused before any heavy import, with one line naming the key."""

import pytest

from helpers import compose
from xtune.config.validate import validate_eval, validate_train
from xtune.errors import XtuneConfigError

BAD = [
    (["data.batch_size=0"], "data.batch_size=0: expected an integer >= 1"),
    (["optim.lr=0"], "optim.lr=0: expected a number > 0"),
    (["optim.lr=-1e-3"], "optim.lr=-0.001: expected a number > 0"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1: expected a number >= 0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: expected an integer >= 1"),
    (["data.num_workers=-2"], "data.num_workers=-2: expected an integer >= 0"),
    (["data.image_size=0"], "data.image_size=0: expected an integer >= 8"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5: expected a number >= 0 and < 1"),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], "leave some data to train on"),
    (["model.drop_path_rate=1.2"], "model.drop_path_rate=1.2: expected a number >= 0 and < 1"),
    (["trainer.precision=17"], "trainer.precision=17: expected one of"),
    (["trainer.devices=0"], "trainer.devices=0: expected >= 1"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    (["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs=-1: expected a number >= 0"),
    (["data=imagefolder"], "data.root is required for imagefolder data"),
    (["model.name=''"], "model.name=: expected a timm model name"),
    (["model.weights=/no/such/file.safetensors"], "model.weights=/no/such/file.safetensors: no such file"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt: no such file"),
    (["train=false", "test=false"], "nothing to do"),
    (["train=false"], "ckpt_path is required"),
    (["seed=-1"], "seed=-1: expected an integer >= 0"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_refused(overrides, message, tmp_path):
    cfg = compose("train", overrides, output_dir=tmp_path)
    with pytest.raises(XtuneConfigError) as caught:
        validate_train(cfg)
    assert message in str(caught.value)
    assert "\n" not in caught.value.one_line()


def test_checkpoint_directory_is_refused(tmp_path):
    cfg = compose("train", [f"ckpt_path={tmp_path}"], output_dir=tmp_path)
    with pytest.raises(XtuneConfigError, match="is a directory"):
        validate_train(cfg)


def test_good_defaults_pass(tmp_path):
    for overrides in ([], ["experiment=quickstart"], ["experiment=mnist_resnet"], ["debug=fdr"]):
        validate_train(compose("train", overrides, output_dir=tmp_path))


def test_eval_requires_a_checkpoint(tmp_path):
    with pytest.raises(XtuneConfigError, match="ckpt_path is required"):
        validate_eval(compose("eval", [], output_dir=tmp_path))


@pytest.mark.parametrize("value", ["abc", "2.5"])
def test_values_of_the_wrong_type_are_refused_by_the_schema(tmp_path, value):
    """xtune.config.schema.DataOptions types every data key: Hydra refuses while composing, and
    the CLI says it in one line."""
    from hydra.errors import ConfigCompositionException

    from xtune.config import CONFIG_DIR
    from xtune.config.explain import explain

    with pytest.raises(ConfigCompositionException) as caught:
        compose("train", [f"data.batch_size={value}"], output_dir=tmp_path)
    line = explain(caught.value, [f"data.batch_size={value}"], CONFIG_DIR, "train")
    assert line.startswith(f"data.batch_size={value}: Value '{value}'") and "Integer" in line


def test_the_data_schema_is_the_datamodules_arguments(tmp_path):
    """One declaration: every key of every data config is a DataOptions field, and back."""
    import dataclasses

    from xtune.config.schema import DataOptions, option_names

    for name in ("digits", "imagefolder", "mnist", "fashion_mnist", "cifar10", "synthetic"):
        cfg = compose("train", [f"data={name}"], output_dir=tmp_path)
        assert set(cfg.data) == {f.name for f in dataclasses.fields(DataOptions)}, name
    assert "batch_size" in option_names() and "_target_" not in option_names()
