"""A generated paired set for the demo, in the order-embedding layout: each image shows three of 24 concepts;
its feature is the sum of the concepts' random directions plus noise, and each of its five captions names
the three concepts (each by one of two synonyms) in a random order among filler words. Caption and image
share only their latent content, which the model must learn to align."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.core.atomic import save_text
from experiments.retrieval.data import caption_path, feature_path

CONCEPTS = 24
FILLERS = ["a", "the", "with", "and", "on", "near", "of", "in"]


def write_paired_folder(root: Path, sizes: dict[str, int], width: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(CONCEPTS, width)) / np.sqrt(width)
    words = [[f"thing{c}a", f"thing{c}b"] for c in range(CONCEPTS)]
    for split, n in sizes.items():
        concepts = np.stack([rng.choice(CONCEPTS, 3, replace=False) for _ in range(n)])
        features = directions[concepts].sum(1) + rng.normal(scale=0.3 / np.sqrt(width), size=(n, width))
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        lines = []
        for row in concepts:
            for _ in range(5):
                named = [words[c][rng.integers(2)] for c in rng.permutation(row)]
                caption = []
                for w in named:
                    caption += [str(rng.choice(FILLERS)), w]
                lines.append(" ".join(caption))
        path = feature_path(root, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, features.astype(np.float32))
        tmp.replace(path)
        save_text("\n".join(lines) + "\n", caption_path(root, split))
