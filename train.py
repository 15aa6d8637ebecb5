"""Fine-tune a timm backbone: `python train.py experiment=quickstart` (see README.md)."""

from xtune.cli import train

if __name__ == "__main__":
    train()
