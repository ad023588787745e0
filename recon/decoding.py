"""Batched greedy and beam-search decoding with a key/value cache.

Every sequence starts from its vector and [BOS]; nothing else about the input is known, so all
rows of a batch sit at the same position and need no padding or attention mask.
"""

import torch


def _cache_dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _strip(ids, eos_id):
    ids = ids.tolist()
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def greedy(decoder, vectors, bos_id, eos_id, max_new_tokens=None):
    """(B, Dv) vectors -> list of B token-id lists (without [BOS] and [EOS])."""
    B, device = vectors.shape[0], vectors.device
    max_new_tokens = min(max_new_tokens or decoder.max_target_len, decoder.max_target_len + 1)
    cache = decoder.new_cache(B, device, _cache_dtype(device))
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = decoder(vectors, tokens, cache)
        for t in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)  # (B,)
            nxt = nxt.masked_fill(done, eos_id)
            out[:, t] = nxt
            done |= nxt == eos_id
            # one sync every 8 steps to stop early, instead of one per token
            if t == max_new_tokens - 1 or (t % 8 == 7 and bool(done.all())):
                break
            logits = decoder(None, nxt[:, None], cache)
    out = out[:, :t + 1].cpu()
    return [_strip(row, eos_id) for row in out]


@torch.no_grad()
def beam_search(decoder, vectors, bos_id, eos_id, num_beams=4, length_penalty=1.0, max_new_tokens=None,
                return_all=False):
    """(B, Dv) vectors -> list of B token-id lists, the best beam of each.

    Beams that emit [EOS] are frozen (their score no longer changes); at the end each beam's
    sum of log-probabilities is divided by length ** length_penalty, length counting [EOS].
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
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = decoder(vecs, tokens, cache)
        for t in range(max_new_tokens):
            logp = logits[:, -1].float().log_softmax(-1).view(B, K, -1)  # (B, K, V)
            V = logp.shape[-1]
            # a finished beam may only "continue" with EOS at no cost (in place: no (B, K, V) copies)
            logp.masked_fill_(done[..., None], float("-inf"))
            if eos_id >= 0:
                logp[..., eos_id].masked_fill_(done, 0.0)
            cand = (scores[..., None] + logp).view(B, K * V)
            scores, flat = cand.topk(K, dim=-1)  # (B, K)
            origin, nxt = flat // V, flat % V
            done = done.gather(1, origin)
            lengths = lengths.gather(1, origin) + (~done).long()
            done = done | (nxt == eos_id)
            seqs = torch.cat([seqs.gather(1, origin[..., None].expand(-1, -1, seqs.shape[-1])), nxt[..., None]], -1)
            if t == max_new_tokens - 1 or (t % 8 == 7 and bool(done.all())):
                break
            cache.reorder((origin + torch.arange(B, device=device)[:, None] * K).view(-1))
            logits = decoder(None, nxt.view(-1, 1), cache)
    final = scores / lengths.clamp(min=1).float() ** length_penalty  # (B, K)
    order = final.argsort(dim=-1, descending=True)
    seqs, final = seqs.cpu(), final.cpu()
    best = [_strip(seqs[b, order[b, 0]], eos_id) for b in range(B)]
    if not return_all:
        return best
    beams = [[(_strip(seqs[b, k], eos_id), float(final[b, k])) for k in order[b].tolist()] for b in range(B)]
    return best, beams
