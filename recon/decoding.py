"""Batched greedy and beam-search decoding with a key/value cache.

Every sequence starts from its vector and [BOS]; nothing else about the input is known, so all
rows of a batch sit at the same position and need no padding or attention mask.
"""

import torch

from recon.device import autocast


def _cache_dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _strip(ids, eos_id):
    ids = ids.tolist()
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def greedy(decoder, vectors, bos_id, eos_id, max_new_tokens=None):
    """(B, Dv) vectors -> list of B token-id lists (without [BOS] and [EOS]).

    Every 8 tokens the finished rows are dropped from the batch and the cache, so a batch of
    mixed lengths costs about its mean length, not its longest."""
    B, device = vectors.shape[0], vectors.device
    max_new_tokens = min(max_new_tokens or decoder.max_target_len, decoder.max_target_len + 1)
    cache = decoder.new_cache(B, device, _cache_dtype(device))
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
    out = torch.full((B, max_new_tokens), eos_id, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)  # which output row each live batch row writes
    done = torch.zeros(B, dtype=torch.bool, device=device)
    with autocast(device):
        logits = decoder(vectors, tokens, cache)
        for t in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1).masked_fill(done, eos_id)  # (b,)
            out[rows, t] = nxt
            done |= nxt == eos_id
            if t == max_new_tokens - 1:
                break
            if t % 8 == 7:  # one host sync every 8 tokens, not one per token
                n_live = int((~done).sum())
                if n_live == 0:
                    break
                if n_live < len(done):
                    live = (~done).nonzero().squeeze(1)
                    cache.select(live)
                    rows, nxt, done = rows[live], nxt[live], done[live]
            logits = decoder(None, nxt[:, None], cache)
    out = out.cpu()
    return [_strip(row, eos_id) for row in out]


@torch.no_grad()
def beam_search(decoder, vectors, bos_id, eos_id, num_beams=4, length_penalty=1.0, max_new_tokens=None,
                return_all=False):
    """(B, Dv) vectors -> list of B token-id lists, the best beam of each.

    Beams that emit [EOS] are frozen (their score no longer changes); at the end each beam's
    sum of log-probabilities is divided by length ** length_penalty, length counting [EOS].
    Every 8 tokens the sentences whose beams have all ended leave the batch and the cache.
    return_all: also return every final beam, best first, as a list of B lists of (ids, score).
    """
    B, K, device = vectors.shape[0], num_beams, vectors.device
    max_new_tokens = min(max_new_tokens or decoder.max_target_len, decoder.max_target_len + 1)
    cache = decoder.new_cache(B * K, device, _cache_dtype(device))
    vecs = vectors.repeat_interleave(K, dim=0)  # (B*K, Dv)
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one until they diverge
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    done = torch.zeros(B, K, dtype=torch.bool, device=device)
    seqs = torch.empty(B, K, 0, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)  # the input sentence of each live batch row
    results = [None] * B  # per input sentence: (beams (K, T) on the CPU, final scores (K,))

    def store(sel):
        final = scores[sel] / lengths[sel].clamp(min=1).float() ** length_penalty  # (b, K)
        for r, s, f in zip(rows[sel].tolist(), seqs[sel].cpu(), final.cpu()):
            results[r] = (s, f)

    with autocast(device):
        logits = decoder(vecs, tokens, cache)
        for t in range(max_new_tokens):
            b = len(rows)
            logp = logits[:, -1].float().log_softmax(-1).view(b, K, -1)  # (b, K, V)
            V = logp.shape[-1]
            # a finished beam may only "continue" with EOS at no cost (in place: no (b, K, V) copies)
            logp.masked_fill_(done[..., None], float("-inf"))
            if eos_id >= 0:
                logp[..., eos_id].masked_fill_(done, 0.0)
            cand = (scores[..., None] + logp).view(b, K * V)
            scores, flat = cand.topk(K, dim=-1)  # (b, K)
            origin, nxt = flat // V, flat % V
            done = done.gather(1, origin)
            lengths = lengths.gather(1, origin) + (~done).long()
            done = done | (nxt == eos_id)
            seqs = torch.cat([seqs.gather(1, origin[..., None].expand(-1, -1, seqs.shape[-1])), nxt[..., None]], -1)
            if t == max_new_tokens - 1:
                break
            cache.reorder((origin + torch.arange(b, device=device)[:, None] * K).view(-1))
            if t % 8 == 7:  # one host sync every 8 tokens, not one per token
                finished = done.all(-1)  # (b,)
                n_finished = int(finished.sum())
                if n_finished == b:
                    break
                if n_finished:
                    store(finished)
                    keep = (~finished).nonzero().squeeze(1)
                    cache.select((keep[:, None] * K + torch.arange(K, device=device)).view(-1))
                    scores, lengths, done, seqs, rows, nxt = (x[keep] for x in (scores, lengths, done, seqs, rows, nxt))
            logits = decoder(None, nxt.reshape(-1, 1), cache)
    store(torch.ones(len(rows), dtype=torch.bool, device=device))
    best, beams = [], []
    for s, f in results:
        order = f.argsort(descending=True).tolist()
        best.append(_strip(s[order[0]], eos_id))
        if return_all:
            beams.append([(_strip(s[k], eos_id), float(f[k])) for k in order])
    return (best, beams) if return_all else best
