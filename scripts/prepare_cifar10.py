"""Download CIFAR-10 once into DATA_DIR/cifar10/cifar-10-batches-py (needs internet): make data-cifar10"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.datasets import CIFAR10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args()
    root = args.data_dir / "cifar10"
    for train in (True, False):
        CIFAR10(str(root), train=train, download=True)  # torchvision checks every file's md5
    print(f"CIFAR-10 is in {root}; train with data_dir={args.data_dir}")


if __name__ == "__main__":
    main()
