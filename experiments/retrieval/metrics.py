"""Retrieval ranks from a score matrix where lower is better (the order-violation penalty), five captions
per image (captions 5i..5i+4 belong to image i), computed in chunks with tensor ops, no loop over queries.

Caption retrieval (image -> text): the rank of the best-scored of the image's five captions among all
captions. Image retrieval (text -> image): the rank of the caption's image among all images. Ranks are
1-based and count strictly better candidates (ties in our favour); R@K is the percentage of queries with
rank <= K.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CAPTIONS_PER_IMAGE = 5


def _summary(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    ranks = ranks.double()
    out = {f"{prefix}_r{k}": float(100.0 * (ranks <= k).double().mean()) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(ranks.median())
    out[f"{prefix}_meanr"] = float(ranks.mean())
    return out


def ranks_from_scores(score_rows: Callable[[int, int], torch.Tensor], n_images: int,
                      chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(caption ranks per image, image ranks per caption). `score_rows(a, b)` gives the scores of captions
    a..b-1 against every image, shape (b - a, n_images)."""
    n_captions = n_images * CAPTIONS_PER_IMAGE
    image_ranks = torch.empty(n_captions, dtype=torch.long)
    # the score of every caption against every image, one caption chunk at a time; the image side needs
    # every caption's score, so it is kept (n_captions x n_images floats), not recomputed
    full = torch.empty(n_captions, n_images)
    for a in range(0, n_captions, chunk):
        b = min(a + chunk, n_captions)
        rows = score_rows(a, b).float().cpu()
        full[a:b] = rows
        own = rows[torch.arange(b - a), torch.arange(a, b) // CAPTIONS_PER_IMAGE].unsqueeze(1)
        image_ranks[a:b] = 1 + (rows < own).sum(1)
    by_image = full.t().reshape(n_images, n_images, CAPTIONS_PER_IMAGE)  # [image, caption's image, k]
    own_best = by_image[torch.arange(n_images), torch.arange(n_images)].min(1).values.unsqueeze(1)
    caption_ranks = 1 + (full.t() < own_best).sum(1)
    return caption_ranks, image_ranks


def retrieval_metrics(score_rows: Callable[[int, int], torch.Tensor], n_images: int) -> dict[str, float]:
    """R@1/5/10, median and mean rank in both directions, and the two recall sums."""
    caption_ranks, image_ranks = ranks_from_scores(score_rows, n_images)
    out = {**_summary(caption_ranks, "caption"), **_summary(image_ranks, "image")}
    out["caption_rsum"] = out["caption_r1"] + out["caption_r5"] + out["caption_r10"]
    out["image_rsum"] = out["image_r1"] + out["image_r5"] + out["image_r10"]
    return out


def order_violation(captions: torch.Tensor, images: torch.Tensor, chunk_elements: int | None = None) -> torch.Tensor:
    """E[c, i] = sum_k max(0, s_ck - v_ik)^2 for every caption c and image i, in tiles of captions x images
    whose (captions x images x dims) intermediate holds at most `chunk_elements` values. On the CPU the tiles
    are cache-sized and worked in place (whole-matrix passes spend their time moving memory; a test of the
    demo's size ran about 10x faster tiled); on a GPU large tiles keep the kernel launches few."""
    n_c, d = captions.shape
    if chunk_elements is None:
        chunk_elements = 2**17 if captions.device.type == "cpu" else 2**24
    rows = max(1, min(n_c, 64, chunk_elements // max(1, d))) if captions.device.type == "cpu" else max(1, n_c)
    cols = max(1, chunk_elements // max(1, rows * d))
    out = torch.empty(n_c, len(images), dtype=torch.result_type(captions, images), device=captions.device)
    for a in range(0, n_c, rows):
        block = captions[a : a + rows].unsqueeze(1)
        for i in range(0, len(images), cols):
            diff = block - images[i : i + cols].unsqueeze(0)
            diff.relu_()
            out[a : a + rows, i : i + cols] = torch.linalg.vecdot(diff, diff)
    return out
