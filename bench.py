"""Training throughput, xtune against plain PyTorch: `python bench.py model=resnet trainer=gpu`."""

from xtune.cli import bench

if __name__ == "__main__":
    bench()
