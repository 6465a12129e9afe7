"""Sequences and the batches made of them. `Ragged`: variable-length id sequences stored as one flat tensor plus
offsets (millions of sentences as Python lists would need gigabytes), padded per batch in one indexing op.
Length-bucketed batches in an order fixed by a generator (shuffle, sort within pools of batches, shuffle the
batches: little padding, random order, a batch count that depends on the number of items only), and the
token-budget batches a Transformer takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Ragged:
    """N variable-length sequences of ids: `flat` holds them end to end (int32), `offsets` (N + 1, int64) where
    each starts; sequence i is flat[offsets[i]:offsets[i + 1]]."""

    flat: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> Ragged:
        offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
        offsets[1:] = torch.tensor([len(s) for s in seqs], dtype=torch.int64).cumsum(0)
        return cls(torch.tensor([w for s in seqs for w in s], dtype=torch.int32), offsets)

    @classmethod
    def from_state(cls, state: dict) -> Ragged:
        return cls(state["flat"], state["offsets"])

    def state(self) -> dict:
        """The two tensors as a dict, for torch.save (the saved form names no class)."""
        return {"flat": self.flat, "offsets": self.offsets}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def head(self, n: int) -> Ragged:
        """The first n sequences (views, no copy)."""
        return Ragged(self.flat[: int(self.offsets[n])], self.offsets[: n + 1])

    def take(self, keep: torch.Tensor) -> Ragged:
        """The sequences at indices `keep` (1-d integers), gathered with tensor ops only."""
        keep = torch.as_tensor(keep, dtype=torch.int64)
        starts, lengths = self.offsets[keep], self.offsets[keep + 1] - self.offsets[keep]
        offsets = torch.zeros(len(keep) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        # token j of the output comes from starts[i] + (j - offsets[i]) for the sequence i it belongs to
        shift = torch.repeat_interleave(starts - offsets[:-1], lengths)
        return Ragged(self.flat[shift + torch.arange(int(offsets[-1]))], offsets)

    def padded(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequences `index` as (T, B) int64 ids padded with 0 and the (T, B) 0/1 float mask."""
        return padded(self.flat, self.offsets, index)


def count_batches(n: int, batch_size: int, pool: int = 20) -> int:
    """How many batches `bucketed_batches` makes of n pairs, without shuffling or sorting anything."""
    span = batch_size * pool
    full, rest = divmod(n, span)
    return full * pool + -(-rest // batch_size)


def bucketed_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator, pool: int = 20
) -> list[list[int]]:
    """Batches of `batch_size` pairs of similar length: shuffle, sort within pools of `pool` batches, shuffle
    the batches. Little padding, random order, fixed by the generator; the count depends on len(lengths) only."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def padded(flat: torch.Tensor, offsets: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequences `index` of a flat id tensor with offsets, as (T, B) int64 ids padded with 0 and the (T, B)
    0/1 float mask, gathered in one indexing op (no Python loop over the batch)."""
    index = torch.as_tensor(index, dtype=torch.int64)
    starts = offsets[index]
    lengths = offsets[index + 1] - starts
    pos = torch.arange(int(lengths.max())).unsqueeze(1)
    mask = pos < lengths.unsqueeze(0)
    gather = (starts.unsqueeze(0) + pos).clamp(max=max(len(flat) - 1, 0))
    ids = torch.where(mask, flat[gather].long(), torch.zeros((), dtype=torch.long))
    return ids, mask.float()


def token_batches(lengths: list[int], max_tokens: int, multiple: int = 1) -> list[list[int]]:
    """Batches of at most `max_tokens` padded tokens (sentences x the longest length in the batch), as zero and
    fairseq batch a Transformer: the items sorted by length (ties by index) and cut greedily, in whole groups of
    `multiple` items (the number of processes, so that every batch splits evenly). Fixed once per data set, so
    the count is known before training; each epoch shuffles their order (`shuffled`). A group longer than the
    budget on its own still makes a batch."""
    if max_tokens < 1 or multiple < 1:
        raise ValueError(f"max_tokens={max_tokens} and multiple={multiple} must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for start in range(0, len(order), multiple):
        group = order[start : start + multiple]
        longest = lengths[group[-1]]  # sorted ascending: the newest group holds the longest item
        if current and longest * (len(current) + len(group)) > max_tokens:
            batches.append(current)
            current = []
        current.extend(group)
    if current:
        batches.append(current)
    return batches


def shuffled(batches: list[list[int]], generator: torch.Generator) -> list[list[int]]:
    """The batches in an order drawn from the generator (their contents unchanged)."""
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
