"""A small generated image set for the demo: ten classes of small objects on cluttered backgrounds.

Each class is a shape x colour pair (five shapes, warm or cool); position, size, exact hue, background
texture and pixel noise vary per image. Objects are small and placed anywhere, so the class shows up as a
sparse, localised response, the kind of evidence that survives a per-channel norm over H x W followed by
global average pooling. The difficulty knobs bring the classes closer, as real images are: `colour_jitter`
(the spread of each object's colour around its warm or cool centre; large values let warm and cool overlap),
`noise` (pixel noise), `distractors` (grey shapes of any class's form beside the object) and `sizes` (small
objects are harder to tell apart).
"""

from __future__ import annotations

import numpy as np

_WARM = np.array([0.9, 0.35, 0.15])
_COOL = np.array([0.15, 0.45, 0.9])


def _shape_masks(size: int) -> list[np.ndarray]:
    r = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    return [
        (np.abs(yy) < 0.95) & (np.abs(xx) < 0.95),  # square
        yy**2 + xx**2 < 0.9,  # disc
        (np.abs(yy) < 0.3) | (np.abs(xx) < 0.3),  # plus
        (np.abs(yy - xx) < 0.35) | (np.abs(yy + xx) < 0.35),  # cross
        (yy**2 + xx**2 < 0.95) & (yy**2 + xx**2 > 0.35),  # ring
    ]


def make_images(n: int, seed: int, colour_jitter: float = 0.08, noise: float = 0.06, distractors: int = 0,
                sizes: tuple[int, ...] = (11, 13, 15)) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images (n, 32, 32, 3) and labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = np.empty((n, 32, 32, 3))
    masks = {s: _shape_masks(s) for s in sizes}
    # background: a smooth random colour gradient plus fine noise
    base = rng.uniform(0.25, 0.6, (n, 1, 1, 3))
    grad = rng.normal(0, 0.15, (n, 2, 3))
    lin = np.linspace(-1, 1, 32)
    rows, cols = lin[None, :, None, None], lin[None, None, :, None]
    images[:] = base + rows * grad[:, None, None, 0] + cols * grad[:, None, None, 1]
    for i, label in enumerate(labels):
        for _ in range(distractors):  # drawn first: the object may cover them, never the other way round
            size = int(rng.choice(sizes))
            y, x = rng.integers(0, 32 - size, 2)
            patch = images[i, y : y + size, x : x + size]
            patch[masks[size][rng.integers(5)]] = rng.uniform(0.3, 0.7)
        size = int(rng.choice(sizes))
        mask = masks[size][label % 5]
        colour = (_WARM if label < 5 else _COOL) + rng.normal(0, colour_jitter, 3)
        y, x = rng.integers(0, 32 - size, 2)
        patch = images[i, y : y + size, x : x + size]
        patch[mask] = colour
    images += rng.normal(0, noise, images.shape)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels
