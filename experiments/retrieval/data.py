"""COCO captions and image features in the order-embedding code's layout:

    <root>/{train,val,test}.txt                five captions per image, lines 5i..5i+4 for image i
    <root>/images/10crop/{train,val,test}.npy  one float32 feature row per image (VGG19 fc7, 10-crop mean)

(the dev split is read from the files named `val`, as upstream does).

Training reads the vocabulary and the id caches that preparation writes; every mismatch (feature rows x 5 !=
caption lines, an empty caption line, a wrong feature width, a missing split) is an error naming the file
and the numbers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from experiments.core.atomic import save_torch
from experiments.core.data.batching import Ragged
from experiments.core.errors import MissingData

PAD, UNK, EOS = 0, 1, 2
SPLITS = ("train", "dev", "test")
FILE_NAMES = {"train": "train", "dev": "val", "test": "test"}
CAPTIONS_PER_IMAGE = 5
# the id caches' layout and tokenisation; in the file name, so an older cache (r2: lower-cased) is rebuilt
FORMAT = "r3"


def caption_path(root: Path, split: str) -> Path:
    return Path(root) / f"{FILE_NAMES[split]}.txt"


def feature_path(root: Path, split: str) -> Path:
    return Path(root) / "images" / "10crop" / f"{FILE_NAMES[split]}.npy"


def read_captions(root: Path, split: str, make_target: str) -> list[list[str]]:
    path = caption_path(root, split)
    if not path.is_file():
        raise MissingData(f"no captions for the {split} split at {path}; run `{make_target}`")
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            raise MissingData(f"{path}, line {i + 1}: an empty caption; every image needs five non-empty lines")
    if len(lines) % CAPTIONS_PER_IMAGE:
        raise MissingData(f"{path} holds {len(lines)} caption lines, not a multiple of {CAPTIONS_PER_IMAGE}")
    # split at whitespace, case kept: upstream reads the archive's pre-tokenised lines as they are
    # (order-embedding datasets.py:27-29, vocab.py:13-14, datasource.py:55)
    return [line.split() for line in lines]


def read_features(root: Path, split: str, n_images: int, width: int, make_target: str) -> np.ndarray:
    path = feature_path(root, split)
    if not path.is_file():
        raise MissingData(f"no image features for the {split} split at {path}; run `{make_target}`")
    try:
        features = np.load(path, mmap_mode="r")
    except ValueError as exc:
        raise MissingData(f"{path} is not a readable .npy array ({exc}); re-run `{make_target}`") from exc
    if features.ndim != 2 or features.shape[1] != width:
        raise MissingData(f"{path} holds features of shape {features.shape}; expected (images, {width})")
    if features.shape[0] != n_images:
        raise MissingData(f"{path} holds {features.shape[0]} feature rows but {caption_path(root, split)} has "
                          f"{n_images * CAPTIONS_PER_IMAGE} captions, i.e. {n_images} images x 5")
    return features


def build_vocabulary(captions: list[list[str]], min_count: int) -> list[str]:
    """Specials, then the words seen at least min_count times, most frequent first (upstream keeps all)."""
    counts = Counter(w for c in captions for w in c)
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return ["<pad>", "<unk>", "<eos>", *words]


def encode(captions: list[list[str]], vocab: list[str]) -> Ragged:
    """Ids with <eos> after every caption: the GRU reads it, as upstream's encoder does."""
    index = {w: i for i, w in enumerate(vocab)}
    return Ragged.from_lists([[*(index.get(w, UNK) for w in c), EOS] for c in captions])


def ids_path(root: Path, split: str) -> Path:
    return Path(root) / f".{split}.ids.{FORMAT}.pt"


def save_ids(root: Path, split: str, caps: Ragged) -> None:
    save_torch(caps.state(), ids_path(root, split))


def load_split(root: Path, split: str, width: int, make_target: str) -> tuple[Ragged, torch.Tensor]:
    """A split's encoded captions and its features (checked against each other)."""
    path = ids_path(root, split)
    if not path.exists():
        raise MissingData(f"the {split} captions are not encoded ({path}); run `{make_target}`")
    caps = Ragged.from_state(torch.load(path, weights_only=False))
    features = read_features(root, split, len(caps) // CAPTIONS_PER_IMAGE, width, make_target)
    return caps, torch.from_numpy(np.array(features, dtype=np.float32))  # a copy: the file is mapped read-only
