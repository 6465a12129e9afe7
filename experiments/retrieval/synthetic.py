"""A generated paired set for the demo, in the order-embedding layout: each image shows `per_item` of `concepts`
latent concepts; its feature is the sum of the concepts' random directions plus noise (`feature_noise`, relative
to one concept's length), and each of its five captions names the concepts (each by one of `synonyms` words) in a
random order among filler words. Caption and image share only their latent content, which the model must learn
to align. Few concepts and many per item make distractors: other images that share most of an item's concepts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.core.atomic import save_text
from experiments.retrieval.data import caption_path, feature_path

FILLERS = ["a", "the", "with", "and", "on", "near", "of", "in"]


def write_paired_folder(root: Path, gen, width: int, seed: int = 1) -> None:
    """One features file and one captions file per split of `gen.sizes` (images), with `gen`'s difficulty."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(gen.concepts, width)) / np.sqrt(width)
    words = [[f"thing{c}{chr(ord('a') + s)}" for s in range(gen.synonyms)] for c in range(gen.concepts)]
    for split, n in gen.sizes.items():
        concepts = np.stack([rng.choice(gen.concepts, gen.per_item, replace=False) for _ in range(n)])
        features = directions[concepts].sum(1) + rng.normal(scale=gen.feature_noise / np.sqrt(width), size=(n, width))
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        lines = []
        for row in concepts:
            for _ in range(5):
                named = [words[c][rng.integers(gen.synonyms)] for c in rng.permutation(row)]
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
