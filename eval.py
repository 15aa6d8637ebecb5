"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=RUN/checkpoints/best.ckpt`."""

from xtune.cli import evaluate

if __name__ == "__main__":
    evaluate()
