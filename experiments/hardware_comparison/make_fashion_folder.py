"""An image folder of Fashion-MNIST PNGs: the "real files" job of bench.py bench.mode=job.

Reads the IDX files of Debian's dataset-fashion-mnist and writes ROOT/train/<class>/*.png and
ROOT/val/<class>/*.png (the first N and M images of each class from the training and test sets).

    python experiments/hardware_comparison/make_fashion_folder.py data/fashion_png --train 600 --val 100
"""

import argparse
from pathlib import Path

from PIL import Image

from xtune.data.sources import fashion_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=600, help="images per class for train/")
    parser.add_argument("--val", type=int, default=100, help="images per class for val/")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    source = fashion_mnist(args.source)
    for split, dataset, per_class in (("train", source.splits["train"], args.train),
                                      ("val", source.splits["test"], args.val)):
        counts = [0] * len(source.classes)
        for index, label in enumerate(dataset.targets):
            if counts[label] >= per_class:
                continue
            folder = Path(args.root) / split / source.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(dataset.images[index]).save(folder / f"{index:05d}.png")
            counts[label] += 1
    print(f"wrote {args.root}: train {args.train} and val {args.val} images per class")


if __name__ == "__main__":
    main()
