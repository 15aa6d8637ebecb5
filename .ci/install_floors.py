"""Install the lowest versions pyproject.toml allows, to prove its floors (CI's floors venv).

    python install_floors.py pyproject.toml [--extras lora,tensorboard] [--print] [-- EXTRA_REQ ...]

Every requirement of [project].dependencies and of the chosen extras (self-references such as
`xtune[slurm,optuna]` are followed) becomes `name==FLOOR`, FLOOR being its `>=` bound (an `==`
pin stays as it is). All go to one `pip install` with the project itself installed `--no-deps`,
so pip resolves only the transitive dependencies; requirements after `--` (test tools) are passed
through unchanged. A requirement with no lower bound is an error: it has no floor to prove.
Standard library only (tomllib: Python >= 3.11), so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

# PEP 508: name, [extras], specifiers, ; marker (URL requirements are not supported)
REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?"
                         r"\s*(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.*))?$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floor_requirement(requirement: str) -> str:
    """`timm>=1.0.17` -> `timm==1.0.17`; `ray[default]>=2.40,<3` -> `ray[default]==2.40`."""
    match = REQUIREMENT.match(requirement)
    if not match:
        raise SystemExit(f"install_floors: cannot parse requirement {requirement!r}")
    specs = [s.strip() for s in match["spec"].strip("()").split(",") if s.strip()]
    pins = [s[2:].strip() for s in specs if s.startswith("==")]
    lows = [s[2:].strip() for s in specs if s.startswith(">=")]
    if pins:
        version = pins[0]
    elif len(lows) == 1:
        version = lows[0]
    else:
        raise SystemExit(f"install_floors: {requirement!r} has no single '>=' floor (or '==' pin) to install")
    extras = f"[{match['extras']}]" if match["extras"] else ""
    marker = f"; {match['marker']}" if match["marker"] else ""
    return f"{match['name']}{extras}=={version}{marker}"


def collect(project: dict, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of `extras`, following self-references."""
    own = normalize(project["name"])
    optional = {normalize(k): v for k, v in project.get("optional-dependencies", {}).items()}
    requirements: list[str] = []
    seen_extras: set[str] = set()

    def add(items: list[str]) -> None:
        for item in items:
            match = REQUIREMENT.match(item)
            if match and normalize(match["name"]) == own:  # xtune[slurm,optuna]
                visit([e.strip() for e in (match["extras"] or "").split(",") if e.strip()])
            elif item not in requirements:
                requirements.append(item)

    def visit(names: list[str]) -> None:
        for name in map(normalize, names):
            if name in seen_extras:
                continue
            if name not in optional:
                raise SystemExit(f"install_floors: no extra [{name}] in pyproject.toml (has: {', '.join(optional)})")
            seen_extras.add(name)
            add(optional[name])

    add(project.get("dependencies", []))
    visit(extras)
    return requirements


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    passthrough: list[str] = []
    if "--" in argv:
        argv, passthrough = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extras", default="", help="comma-separated extras to include, e.g. lora,tensorboard")
    parser.add_argument("--print", action="store_true", help="print the requirements, install nothing")
    args = parser.parse_args(argv)

    project = tomllib.loads(args.pyproject.read_text())["project"]
    floors = [floor_requirement(r) for r in collect(project, [e for e in args.extras.split(",") if e.strip()])]
    if args.print:
        print("\n".join(floors + passthrough))
        return 0
    root = args.pyproject.resolve().parent
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    print("install_floors:", " ".join(floors + passthrough), flush=True)
    subprocess.run([*pip, "--no-deps", "-e", str(root)], check=True)
    subprocess.run([*pip, *floors, *passthrough], check=True)
    # the floors are pinned (==); pip check fails if what pip resolved around them is inconsistent
    return subprocess.run([sys.executable, "-m", "pip", "check"]).returncode


if __name__ == "__main__":
    sys.exit(main())
