"""Length-bucketed batches: deterministic, a full epoch without repeats, less padding."""

import torch

from recon.speed import padding_fraction
from recon.batching import Batches


def lengths(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(3, 60, (n,), generator=g)).tolist()


def test_an_epoch_covers_each_example_at_most_once_and_is_deterministic():
    ls = lengths(1000)
    for pool in (0, 5):
        b = Batches(ls, 64, seed=3, pool=pool)
        epoch = [b(step) for step in range(b.per_epoch)]
        flat = [i for batch in epoch for i in batch]
        assert len(flat) == len(set(flat)) == 15 * 64  # the ragged last 40 dropped
        assert all(len(batch) == 64 for batch in epoch)
        again = Batches(ls, 64, seed=3, pool=pool)
        assert [again(s) for s in range(b.per_epoch, 2 * b.per_epoch)] == [b(s) for s in range(b.per_epoch, 2 * b.per_epoch)]
        assert b(b.per_epoch) != b(0)  # a new epoch, a new order


def test_buckets_hold_similar_lengths_and_cut_padding():
    ls = lengths(4000)
    plain, bucketed = Batches(ls, 32, seed=0, pool=0), Batches(ls, 32, seed=0, pool=20)
    assert bucketed.padding() < plain.padding() / 3
    first = [ls[i] for i in bucketed(0)]
    assert first == sorted(first)
    # the order of batches is shuffled: lengths do not rise through the epoch
    longest = [max(ls[i] for i in bucketed(s)) for s in range(bucketed.per_epoch)]
    assert longest != sorted(longest)


def test_padding_fraction():
    assert padding_fraction([[2, 4], [3, 3]]) == 1 - 12 / 14
    assert padding_fraction([[5, 5, 5]]) == 0
