"""xtune: fine-tune pretrained timm backbones with PyTorch Lightning, configured by Hydra.

Importing the package is cheap on purpose (no torch): the CLI composes, validates and prints
configs before any heavy import.
"""

from xtune.errors import XtuneConfigError, XtuneDataError, XtuneError

__version__ = "0.1.0"
__all__ = ["XtuneError", "XtuneConfigError", "XtuneDataError", "__version__"]
