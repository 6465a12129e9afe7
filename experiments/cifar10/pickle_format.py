"""Writes images in the `cifar-10-batches-py` pickle format (the format of the real download), for the
demo's generated images and the tests' fixtures."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from experiments.cifar10.data import FOLDER

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(images: np.ndarray, labels: np.ndarray, name: str) -> dict:
    # str keys: what Python 3 reads from the real (Python 2) files with encoding="latin1", as torchvision does
    return {
        "batch_label": name,
        "labels": [int(v) for v in labels],
        "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1).astype(np.uint8),
        "filenames": [f"{name}_{i}.png" for i in range(len(images))],
    }


def write_cifar_folder(root: Path, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                       replace: bool = False):
    """Write root/cifar-10-batches-py with five training batches and one test batch; atomic as a folder.
    With `replace` an existing folder is swapped out (callers hold the data folder's prepare lock)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-tmp-"))
    tmp.chmod(0o755)
    try:
        for i, (xs, ys) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5), strict=True), start=1):
            with open(tmp / f"data_batch_{i}", "wb") as f:
                pickle.dump(_batch(xs, ys, f"training batch {i} of 5"), f)
        with open(tmp / "test_batch", "wb") as f:
            pickle.dump(_batch(test_x, test_y, "testing batch 1 of 1"), f)
        with open(tmp / "batches.meta", "wb") as f:
            pickle.dump({"label_names": CLASSES, "num_vis": 3072, "num_cases_per_batch": len(train_x) // 5}, f)
        if replace and (root / FOLDER).exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-old-"))
            os.replace(root / FOLDER, old / FOLDER)
            shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process finished first: keep theirs
            os.replace(tmp, root / FOLDER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
