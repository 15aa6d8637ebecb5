"""The committed per-step training losses of a tiny run (torchtune's regression check).

A change that alters training numerics - data order, augmentation, initialisation, optimizer,
schedule, loss - moves these numbers; tests/integration/test_reference_losses.py compares a fresh
run against quickstart_losses.json. When a change is meant to alter them, regenerate and commit:

    python tests/reference/losses.py --write
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE / "quickstart_losses.json"
#: the run: quickstart's model, data and optimizer, 2 epochs of 6 steps, every step logged
OVERRIDES = ["experiment=quickstart", "logger=csv", "callbacks=none", "trainer.max_epochs=2",
             "trainer.limit_train_batches=6", "trainer.limit_val_batches=2", "test=false",
             "trainer.log_every_n_steps=1", "trainer.deterministic=true", "trainer.enable_progress_bar=false"]


def losses(out_dir: Path) -> list[float]:
    """Train in this process with OVERRIDES; the per-step training losses, in step order."""
    sys.path.insert(0, str(HERE.parent))
    from helpers import compose

    from xtune.tasks.train import run_training

    run_training(compose("train", OVERRIDES, output_dir=out_dir))
    with open(out_dir / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss_step")]
    return [round(float(row["train/loss_step"]), 6) for row in sorted(rows, key=lambda r: int(r["step"]))]


if __name__ == "__main__":
    if "--write" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            found = losses(Path(tmp))
        TABLE.write_text(json.dumps({"overrides": OVERRIDES, "losses": found}, indent=1) + "\n")
        print(f"wrote {len(found)} losses to {TABLE}")
