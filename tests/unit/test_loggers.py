"""W&B works without an account, and respects WANDB_MODE."""

from xtune.loggers import wandb_api_key_configured, wandb_logger, wandb_mode
from xtune.report import redact


def test_offline_without_a_key(monkeypatch, tmp_path):
    assert not wandb_api_key_configured()
    assert wandb_mode() == "offline"


def test_default_loggers_leave_wandb_out_until_it_is_set_up(monkeypatch, tmp_path):
    assert wandb_mode("if_configured") is None
    assert wandb_logger(str(tmp_path / "run"), mode="if_configured") is None
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("if_configured") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("if_configured") == "online"


def test_wandb_mode_is_respected(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    assert wandb_mode("offline") == "offline"  # the config wins over the environment


def test_online_with_a_key_in_env_or_netrc(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "online"


def test_secrets_are_redacted():
    config = {"logger": {"wandb": {"api_key": "abc", "project": "p"}}, "hub_token": "t", "lr": 1,
              "items": [{"password": "pw"}], "key_free": None}
    assert redact(config) == {"logger": {"wandb": {"api_key": "<redacted>", "project": "p"}},
                              "hub_token": "<redacted>", "lr": 1, "items": [{"password": "<redacted>"}],
                              "key_free": None}
