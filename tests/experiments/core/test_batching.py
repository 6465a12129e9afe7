"""The ragged sequence type every text task stores its ids in, and the batch orders built on lengths."""

import pytest
import torch

from experiments.core.data.batching import Ragged, bucketed_batches, count_batches

SEQS = [[5, 6, 7], [], [8], [9, 10, 11, 12], [13, 14]]


def test_ragged_holds_each_sequence_and_its_length():
    r = Ragged.from_lists(SEQS)
    assert len(r) == len(SEQS) and r.flat.dtype == torch.int32 and r.offsets.dtype == torch.int64
    assert r.lengths().tolist() == [len(s) for s in SEQS]
    assert [r[i].tolist() for i in range(len(r))] == SEQS


def test_ragged_take_and_head_gather_the_same_sequences_as_lists_would():
    r = Ragged.from_lists(SEQS)
    keep = torch.tensor([3, 0, 1, 3])
    taken = r.take(keep)
    assert [taken[i].tolist() for i in range(len(taken))] == [SEQS[i] for i in keep.tolist()]
    head = r.head(2)
    assert [head[i].tolist() for i in range(len(head))] == SEQS[:2]
    assert Ragged.from_state(r.state()).lengths().tolist() == r.lengths().tolist()


def test_ragged_padded_is_time_major_with_a_mask_of_the_true_lengths():
    r = Ragged.from_lists(SEQS)
    ids, mask = r.padded([3, 2, 1])
    assert ids.shape == (4, 3) and ids.dtype == torch.int64
    assert ids[:, 0].tolist() == [9, 10, 11, 12] and ids[:, 1].tolist() == [8, 0, 0, 0]
    assert ids[:, 2].tolist() == [0, 0, 0, 0]
    assert mask.sum(0).tolist() == [4.0, 1.0, 0.0]


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1281])
def test_bucketed_batches_cover_every_item_once_in_the_counted_number(n):
    lengths = torch.randint(1, 50, (n,)).tolist()
    batches = bucketed_batches(lengths, 64, torch.Generator().manual_seed(0))
    assert len(batches) == count_batches(n, 64)
    assert sorted(i for b in batches for i in b) == list(range(n))
