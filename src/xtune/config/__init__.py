"""Config location, validation and resolvers. Torch-free: runs before any heavy import."""

from pathlib import Path

#: The directory holding train.yaml, eval.yaml and the config groups. In a source checkout
#: `src/xtune/configs` is a link to the repository's top-level `configs/`; wheels carry a copy.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
