"""Batches of a training run: which sentences each step takes, and padding them into tensors."""

import torch

from recon.device import to_device
from recon.speed import padding_fraction


def pad_batch(seqs, pad_id, device, multiple=1):
    """list of id lists -> (B, T) tensor, right-padded (T rounded up to `multiple`: fewer shapes
    for torch.compile). On CUDA the host copy is pinned and the transfer does not block."""
    T = -(-max(len(s) for s in seqs) // multiple) * multiple
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return to_device(out, device)


class Batches:
    """The global batch of indices of each step: a pure function of (seed, step), so a resumed
    run sees the same batches.

    Each epoch is a fresh permutation (the ragged last batch dropped). With pool > 0 the
    permutation is cut into pools of `pool` batches, each pool is sorted by length and cut into
    batches, and the epoch's batches are shuffled: a batch holds similar lengths (little padding)
    while no order by length runs through the epoch.
    """

    def __init__(self, lengths, batch_size, seed, pool=0):
        self.lengths = lengths
        self.n, self.batch_size, self.seed, self.pool = len(lengths), min(batch_size, len(lengths)), seed, pool
        self.per_epoch = self.n // self.batch_size
        self._epoch, self._batches = None, None

    def epoch(self, epoch):
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        bs = self.batch_size
        perm = torch.randperm(self.n, generator=g).tolist()[:self.per_epoch * bs]
        if not self.pool:
            return [perm[i:i + bs] for i in range(0, len(perm), bs)]
        size = self.pool * bs
        pools = [sorted(perm[s:s + size], key=self.lengths.__getitem__) for s in range(0, len(perm), size)]
        batches = [p[i:i + bs] for p in pools for i in range(0, len(p), bs)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __call__(self, step):
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch(epoch)
        return self._batches[i]

    def padding(self, epoch=0):
        """Share of padded positions over one epoch's batches."""
        return padding_fraction([[self.lengths[i] for i in b] for b in self.epoch(epoch)])
