"""Find every command the documentation shows a user: README.md, slurm/README.md and the header
comments of every file under configs/. tests/integration/test_readme_commands.py runs each one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "slurm/README.md")
COMMAND = re.compile(r"^((?:[A-Z_]+=\S+\s+)*)((?:python3? (?:train|eval|bench)\.py|xtune-[a-z-]+)(?:\s.*)?)$")


def _command(text: str) -> str | None:
    """The command on a line (environment prefix kept, trailing `# comment` dropped), or None."""
    text = re.split(r"\s{2,}#|\s+#\s", text.strip(), maxsplit=1)[0].strip()
    return text if COMMAND.match(text) else None


def from_markdown(path: Path) -> list[str]:
    commands, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            found = _command(line)
            if found:
                commands.append(found)
        else:  # inline `python train.py ...` with at least one argument
            for span in re.findall(r"`([^`]+)`", line):
                found = _command(span)
                program = 2 if found and found.startswith("python") else 1  # `python train.py` or `xtune-x`
                if found and len(found.split()) > program:  # a bare name refers to the program
                    commands.append(found)
    return commands


def from_config(path: Path) -> list[str]:
    """Command lines in a YAML file's header (its leading comment block)."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        found = _command(line.lstrip("#"))
        if found:
            commands.append(found)
    return commands


def documented_commands() -> dict[str, list[str]]:
    """{command: [files that show it]}"""
    found: dict[str, list[str]] = {}
    sources = [(ROOT / doc, from_markdown) for doc in DOCS]
    sources += [(path, from_config) for path in sorted((ROOT / "configs").rglob("*.yaml"))]
    for path, reader in sources:
        for command in reader(path):
            found.setdefault(command, []).append(str(path.relative_to(ROOT)))
    return found


if __name__ == "__main__":
    for command, files in sorted(documented_commands().items()):
        print(f"{command}    <- {', '.join(files)}")
