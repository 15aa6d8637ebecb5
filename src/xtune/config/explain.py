"""Hydra's composition errors as one line that says what to type instead.

Hydra reports a typo in a key (`optim.lrr=1`) by suggesting `+optim.lrr=1` (which would add the
typo to the config), and a typo in an option (`model=resnt`) with a 10-line list. Torch-free:
runs before any heavy import.
"""

from __future__ import annotations

import difflib
import errno
import re

from xtune.config.validate import MOVED


def _close(word: str, choices, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"did you mean {' or '.join(prefix + c for c in close)}? " if close else ""


def _node_keys(config_dir: str, config_name: str, args: list[str], full_key: str) -> list[str]:
    """The keys beside `full_key` in the config composed without the offending overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    keep = [a for a in args if not a.startswith("-") and a.split("=", 1)[0].lstrip("+~") != full_key]
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=keep)
    except Exception:  # noqa: BLE001 - another override is broken too: no suggestion then
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return [str(k) for k in node.keys() if not str(k).startswith("_")] if OmegaConf.is_dict(node) else []


def explain(error: BaseException, args: list[str], config_dir: str, config_name: str) -> str | None:
    """One line for an error Hydra raised while composing or creating the run directory, else None."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and error.options is not None:
        missing = str(error.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        options = list(error.options)
        return (f"{group}={option}: there is no such {group} config; {_close(option, options)}"
                f"choose one of {', '.join(options)} (configs/{group}/)")
    if isinstance(error, OverrideParseException):
        first = str(error).splitlines()[0]
        return (f"cannot read the command line ({first}); write overrides as key=value or group=option "
                "(lists: key=[a,b]; quote values with spaces): https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(error, ConfigCompositionException):
        cause = str(error.__cause__ or "")
        match = re.search(r"full_key: (\S+)", cause)
        if "not in struct" in cause and match:
            full_key = match.group(1)
            if full_key in MOVED:
                return f"{full_key} is not a key any more: use {MOVED[full_key]}"
            parent, _, key = full_key.rpartition(".")
            keys = _node_keys(config_dir, config_name, args, full_key)
            where = parent or "the config"
            known = f"its keys: {', '.join(keys)}; " if keys and len(keys) <= 30 else ""
            return (f"{full_key}: {where} has no key '{key}' ({_close(key, keys, parent + '.' if parent else '')}{known}"
                    f"to add a new key on purpose, write +{full_key}=...)").replace("( ", "(")
        merging = re.match(r"Error merging override (\S+)", str(error))
        if merging and cause:  # a value of the wrong type for its schema (xtune.config.schema)
            return f"{merging.group(1)}: {cause.splitlines()[0]}"
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = cause.splitlines()[0] if cause else ""
        return " ".join(lines[:1] + ([f"({detail})"] if detail else []))
    if isinstance(error, OSError) and error.filename:
        return os_error_line(error, "the run directory")
    return None


def os_error_line(error: OSError, what: str = "a file") -> str:
    """A full disk, a read-only or forbidden place: where, and what to do."""
    where = f"{error.filename}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the disk (or quota) while writing {where}: free some space or point "
                "paths.log_dir at a disk with room, then run the same command again (a run continues from "
                "its last checkpoint)")
    reason = error.strerror or type(error).__name__
    return (f"cannot write {what} {where} ({reason}): choose a writable place with paths.log_dir=/some/dir "
            "(or hydra.run.dir=/some/dir/run)")
