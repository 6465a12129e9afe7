"""Order embeddings (Vendrov et al. 2016) as ivendrov/order-embedding builds them, with the sentence GRU
normalised as the paper placed it (`rlngru`, the same four norms per cell as translation):

    s = |l2norm(GRU(E w)_last)|          words: embedding 300, uniform +-0.1; GRU 1024
    v = |l2norm(W x)|                    x: a 4096-d CNN feature; W Glorot-uniform
    E(s, v) = sum_k max(0, s_k - v_k)^2  the order-violation penalty: lower is a better match

Loss: for every pair (s_i, v_i) of a batch, every other image and every other caption of the batch as a
negative, margin 0.05, both directions, summed over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmsnorm import NormGRU, NormSpec


def order_penalty_matrix(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """E[i, j] = E(s_i, v_j) for a batch: (B, B)."""
    return torch.relu(s.unsqueeze(1) - v.unsqueeze(0)).pow(2).sum(-1)


def contrastive_loss(s: torch.Tensor, v: torch.Tensor, margin: float) -> torch.Tensor:
    e = order_penalty_matrix(s, v)
    positive = e.diagonal().unsqueeze(1)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    images = torch.relu(margin + positive - e)  # caption i against every other image j
    captions = torch.relu(margin + positive.t() - e)  # image j against every other caption i
    return (images * off).sum() + (captions * off).sum()


class OrderEmbedding(nn.Module):
    def __init__(self, vocab: int, word_dim: int, dim: int, image_dim: int, norm: NormSpec):
        super().__init__()
        self.embedding = nn.Embedding(vocab, word_dim, padding_idx=0)
        self.gru = NormGRU(word_dim, dim, norm)
        self.image = nn.Linear(image_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.gru.forward_cell.weight_ih, -0.1, 0.1)  # hidden weights: orthogonal (the cell)
        nn.init.xavier_uniform_(self.image.weight)
        nn.init.zeros_(self.image.bias)

    def encode_captions(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(T, B) ids and 0/1 mask -> (B, dim) non-negative unit vectors."""
        _, last = self.gru(self.embedding(words), mask)
        return F.normalize(last, dim=-1).abs()

    def encode_images(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(features), dim=-1).abs()

    def forward(self, words: torch.Tensor, mask: torch.Tensor, features: torch.Tensor):
        """(captions, images) embeddings of a training batch: one call, so DistributedDataParallel sees it."""
        return self.encode_captions(words, mask), self.encode_images(features)
