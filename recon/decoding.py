"""Batched greedy and beam-search decoding with a key/value cache.

Every sequence starts from its vector and [BOS]; nothing else about the input is known, so all
rows of a batch sit at the same position and need no padding or attention mask.
"""

import torch

from recon.device import autocast, resolve_precision


def _precision(decoder, device):
    """bf16 or fp32: what `decoder` generates in on `device` (Decoder.generation_precision)."""
    return resolve_precision(decoder.generation_precision, device)


def _exit_every(device):
    """Tokens between beam search's checks for sentences whose beams have all ended: each check reads a
    count on the host, which costs a CUDA stream its lead and a CPU nothing. On a CPU every finished beam
    also leaves the batch at once (docs/speed.md, "Finished beams on a CPU")."""
    return 1 if device.type == "cpu" else 8


def _cache_dtype(decoder, device):
    # on the CPU attention runs in fp32 under bf16 autocast too (Block.attention): its keys stay fp32
    return torch.bfloat16 if device.type == "cuda" and _precision(decoder, device) == "bf16" else torch.float32


# UTF-8: how many continuation bytes follow a byte (-1: never written as a first byte: a
# continuation byte 0x80-0xBF, a byte no valid text holds, or a control character, which
# normalised text never holds)
_CONTINUATIONS = [-1] * 0x20 + [0] * 0x5F + [-1] + [-1] * 0x42 + [1] * 0x1E + [2] * 0x10 + [3] * 0x05 + [-1] * 0x0B
# the first continuation byte after E0, ED, F0 and F4 is narrower (no overlong forms, no surrogates)
_FIRST_RANGE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


class ValidText:
    """Decoding that can only write valid text: special pieces (padding, unknown, [BOS]) never, and
    byte pieces (SentencePiece's byte fallback) only as whole UTF-8 characters: a continuation byte
    only where one is due, nothing else until the character is complete, and a first byte only if
    its character can be finished before the length limit. Without it, a decoder that writes half
    a character leaves U+FFFD in the text.

    byte_values: for each vocabulary id, the byte it stands for, or -1; banned: ids never written.
    The state of each row is (continuation bytes still due, lowest and highest allowed next byte).
    """

    def __init__(self, byte_values, banned, device):
        self.byte = torch.tensor(byte_values, device=device)  # (V,)
        table = torch.tensor(_CONTINUATIONS, device=device)
        self.follow = torch.where(self.byte >= 0, table[self.byte.clamp(min=0)], 0)  # (V,) -1: never first
        self.banned = torch.zeros(len(byte_values), dtype=torch.bool, device=device)
        self.banned[list(banned)] = True
        lo, hi = torch.full((256,), 0x80, device=device), torch.full((256,), 0xBF, device=device)
        for b, (a, z) in _FIRST_RANGE.items():
            lo[b], hi[b] = a, z
        self.first_lo, self.first_hi = lo, hi
        self.byte_ids = (self.byte >= 0).nonzero().squeeze(1)  # the byte pieces' ids

    @classmethod
    def for_tokenizer(cls, tokenizer, device):
        return cls(tokenizer.byte_values(), tokenizer.never_written(), device)

    def start(self, n):
        return torch.zeros(n, 3, dtype=torch.long, device=self.byte.device)  # (n, 3): due, lo, hi

    def mask_(self, logits, state, steps_left):
        """Set the logits (n, V) of every token this row may not write next to -inf, in place."""
        due, lo, hi = state.unbind(-1)
        free = (self.follow < 0) | (self.follow > steps_left) | self.banned  # (V,) not allowed between characters
        # two passes over (n, V), the rest on the byte pieces' columns: rows between characters may
        # write what `free` allows, a row within a character only the byte that is due
        kept = logits.index_select(1, self.byte_ids)  # (n, bytes), before the passes
        within = due[:, None] > 0  # (n, 1)
        logits.masked_fill_(free, float("-inf"))
        logits.masked_fill_(within, float("-inf"))
        byte = self.byte[self.byte_ids]
        not_due = ~((byte >= lo[:, None]) & (byte <= hi[:, None]))  # (n, bytes)
        # index_copy_, as _static_step writes: a step captured in a CUDA graph may hold it
        logits.index_copy_(1, self.byte_ids, kept.masked_fill_(torch.where(within, not_due, free[self.byte_ids]),
                                                               float("-inf")))

    def advance(self, state, tokens):
        """The state after each row wrote `tokens` (n,)."""
        due = state[:, 0]
        byte = self.byte[tokens].clamp(min=0)
        starting = due == 0
        new_due = torch.where(starting, self.follow[tokens].clamp(min=0), due - 1)
        lo = torch.where(starting, self.first_lo[byte], 0x80)
        hi = torch.where(starting, self.first_hi[byte], 0xBF)
        return torch.stack([new_due, lo, hi], -1)


def canonical_pieces(piece_texts):
    """For each vocabulary id, the id of its text as the metrics see words (lowercased, accents and
    punctuation stripped; see recon.metrics.normalize_loose), or -1 where nothing is left (punctuation,
    bytes, specials): (V,) longs, for ban_repeats_'s `canon`."""
    from recon.metrics import normalize_loose
    ids, canon = {}, []
    for text in piece_texts:
        key = normalize_loose(text).replace(" ", "") if text else ""
        canon.append(ids.setdefault(key, len(ids)) if key else -1)
    return torch.tensor(canon)


def ban_repeats_(logits, history, n, canon=None):
    """Set to -inf, in place, every token that would complete an n-gram already in `history`:
    logits (b, V), history (b, t) of the tokens written so far (HF's no_repeat_ngram_size).

    canon: None, or (V,) class ids (canonical_pieces): the n-grams are then of classes, with the
    pieces of class -1 (punctuation) left out, so "Sea" repeats "sea" and "animals, and animals"
    repeats "animals and animals"; a token is banned with every token of its class."""
    if canon is None:
        return _ban_ids_(logits, history, n)
    if n < 2 or history.shape[1] < n:
        return
    c = canon[history]  # (b, t)
    keep = c >= 0
    # each row's classes without the -1s, moved to the front (a stable sort keeps their order)
    c = c.gather(1, (~keep).to(torch.int8).argsort(dim=1, stable=True))
    length = keep.sum(1)  # (b,)
    t = c.shape[1]
    last = c.gather(1, (length[:, None] - n + 1 + torch.arange(n - 1, device=c.device)).clamp(min=0))  # (b, n-1)
    windows = c.unfold(1, n - 1, 1)[:, :t - n + 1]  # (b, t-n+1, n-1)
    starts = torch.arange(t - n + 1, device=c.device)
    hit = (windows == last[:, None]).all(-1) & (starts[None] + n - 1 < length[:, None])  # (b, t-n+1)
    rows, at = hit.nonzero(as_tuple=True)
    if len(rows):
        # only the rows with a ban, each once; class ids are below the vocabulary size: (h, V) holds them
        hit, row_of = rows.unique(return_inverse=True)
        banned = torch.zeros(len(hit), canon.shape[0], dtype=torch.bool, device=logits.device)
        banned[row_of, c[rows, at + n - 1]] = True
        logits[hit] = logits[hit].masked_fill_(banned[:, canon.clamp(min=0)] & (canon >= 0), float("-inf"))


def _ban_ids_(logits, history, n):
    t = history.shape[1]
    if n < 1 or t < n:
        return
    windows = history.unfold(1, n - 1, 1)[:, :t - n + 1]  # (b, t-n+1, n-1); n >= 2
    hit = (windows == history[:, t - n + 1:][:, None]).all(-1)  # (b, t-n+1): this window ends like history
    rows, starts = hit.nonzero(as_tuple=True)
    logits[rows, history[rows, starts + n - 1]] = float("-inf")


def _strip(ids, eos_id):
    ids = ids.tolist()
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def greedy(decoder, vectors, bos_id, eos_id, max_new_tokens=None, valid=None, no_repeat_ngram=0, canon=None,
           temperature=0.0, generator=None):
    """(B, Dv) vectors -> list of B token-id lists (without [BOS] and [EOS]).

    Every 8 tokens the finished rows are dropped from the batch and the cache, so a batch of
    mixed lengths costs about its mean length, not its longest. valid: a ValidText, or None;
    no_repeat_ngram: never write an n-gram of tokens twice (0: off); canon: compare them loosely
    (see ban_repeats_). temperature > 0: draw each token from softmax(logits / temperature) (with
    `generator`, a torch.Generator on the vectors' device) instead of taking the most likely; the
    bans and the valid-text mask hold as in greedy decoding."""
    B, device = vectors.shape[0], vectors.device
    max_new_tokens = min(max_new_tokens or decoder.max_target_len, decoder.max_target_len + 1)
    cache = decoder.new_cache(B, device, _cache_dtype(decoder, device))
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
    out = torch.full((B, max_new_tokens), eos_id, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)  # which output row each live batch row writes
    done = torch.zeros(B, dtype=torch.bool, device=device)
    state = valid.start(B) if valid else None
    with autocast(device, _precision(decoder, device)):
        logits = decoder(vectors, tokens, cache)
        for t in range(max_new_tokens):
            last = logits[:, -1]  # (b, V)
            if no_repeat_ngram:
                ban_repeats_(last, out[rows, :t], no_repeat_ngram, canon)
            if valid:
                valid.mask_(last, state, max_new_tokens - 1 - t)
            if temperature > 0:
                probs = torch.softmax(last.float() / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                nxt = last.argmax(-1)
            nxt = nxt.masked_fill(done, eos_id)  # (b,)
            if valid:
                state = valid.advance(state, nxt)
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
                    state = state[live] if valid else None
            logits = decoder(None, nxt[:, None], cache)
    out = out.cpu()
    return [_strip(row, eos_id) for row in out]


@torch.no_grad()
def beam_search(decoder, vectors, bos_id, eos_id, num_beams=4, length_penalty=1.0, max_new_tokens=None,
                return_all=False, valid=None, no_repeat_ngram=0, canon=None):
    """(B, Dv) vectors -> list of B token-id lists, the best beam of each.

    Beams that emit [EOS] are frozen (their score no longer changes); at the end each beam's
    sum of log-probabilities is divided by length ** length_penalty, length counting [EOS].
    Every 8 tokens on CUDA the sentences whose beams have all ended leave the batch and the cache; on
    a CPU each finished beam leaves them at once (its only continuation is [EOS] at no cost).
    return_all: also return every final beam, best first, as a list of B lists of (ids, score).
    valid: a ValidText, or None; no_repeat_ngram: never write an n-gram of tokens twice (0: off);
    canon: compare them loosely (see ban_repeats_).
    """
    B, K, device = vectors.shape[0], num_beams, vectors.device
    max_new_tokens = min(max_new_tokens or decoder.max_target_len, decoder.max_target_len + 1)
    cache = decoder.new_cache(B * K, device, _cache_dtype(decoder, device))
    vecs = vectors.repeat_interleave(K, dim=0)  # (B*K, Dv)
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one until they diverge
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    done = torch.zeros(B, K, dtype=torch.bool, device=device)
    seqs = torch.empty(B, K, 0, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)  # the input sentence of each live batch row
    results = [None] * B  # per input sentence: (beams (K, T) on the CPU, final scores (K,))
    state = valid.start(B * K).view(B, K, 3) if valid else None
    every = _exit_every(device)
    live = torch.arange(B * K, device=device) if every == 1 else None  # a CPU: the slots the cache holds
    row_of = None if live is None else live.clone()  # (b*K,): the cache row of each of those slots

    def store(sel):
        final = scores[sel] / lengths[sel].clamp(min=1).float() ** length_penalty  # (b, K)
        for r, s, f in zip(rows[sel].tolist(), seqs[sel].cpu(), final.cpu()):
            results[r] = (s, f)

    with autocast(device, _precision(decoder, device)):
        logits = decoder(vecs, tokens, cache)
        for t in range(max_new_tokens):
            b = len(rows)
            args = (scores, done, seqs, state, valid, no_repeat_ngram, canon, eos_id, max_new_tokens - 1 - t)
            if live is None or t == 0:  # every beam's logits
                scores, origin, nxt = _beam_step(logits[:, -1], *args)
            else:
                scores, origin, nxt = _live_beam_step(logits[:, -1], live, *args)
            done = done.gather(1, origin)
            lengths = lengths.gather(1, origin) + (~done).long()
            done = done | (nxt == eos_id)
            if valid:
                state = valid.advance(state.gather(1, origin[..., None].expand(-1, -1, 3)).view(b * K, 3),
                                      nxt.view(-1)).view(b, K, 3)
            seqs = torch.cat([seqs.gather(1, origin[..., None].expand(-1, -1, seqs.shape[-1])), nxt[..., None]], -1)
            if t == max_new_tokens - 1:
                break
            came_from = origin + torch.arange(b, device=device)[:, None] * K  # (b, K) each beam's slot before
            if live is None:
                cache.reorder(came_from.view(-1))
            else:  # the cache holds the unfinished beams alone, in slot order
                cache.select(row_of[came_from[~done]])
            if t % every == every - 1:  # a host sync: every 8 tokens on CUDA, every token on a CPU
                finished = done.all(-1)  # (b,)
                n_finished = int(finished.sum())
                if n_finished == b:
                    break
                if n_finished:
                    store(finished)
                    keep = (~finished).nonzero().squeeze(1)
                    if live is None:  # (else their beams have all left the cache)
                        cache.select((keep[:, None] * K + torch.arange(K, device=device)).view(-1))
                    scores, lengths, done, seqs, rows, nxt = (x[keep] for x in (scores, lengths, done, seqs, rows, nxt))
                    state = state[keep] if valid else None
            if live is not None:
                live = _live_rows(done, row_of)
            logits = decoder(None, nxt.reshape(-1, 1) if live is None else nxt.view(-1)[live, None], cache)
    store(torch.ones(len(rows), dtype=torch.bool, device=device))
    best, beams = [], []
    for s, f in results:
        order = f.argsort(descending=True).tolist()
        best.append(_strip(s[order[0]], eos_id))
        if return_all:
            beams.append([(_strip(s[k], eos_id), float(f[k])) for k in order])
    return (best, beams) if return_all else best


def _live_rows(done, row_of):
    """The slots (of b*K) of the unfinished beams, in order: the rows of the cache; row_of (>= b*K) is
    set to each one's row."""
    live = (~done).view(-1).nonzero().squeeze(1)
    row_of[live] = torch.arange(len(live), device=live.device)
    return live


def _beam_step(logits, scores, done, seqs, state, valid, no_repeat_ngram, canon, eos_id, steps_left):
    """One step of beam search from every beam's logits (b*K, V): (scores, origin beam, token), each (b, K)."""
    b, K = scores.shape
    logp = logits.float().log_softmax(-1).view(b, K, -1)  # (b, K, V)
    V = logp.shape[-1]
    if no_repeat_ngram:
        ban_repeats_(logp.view(b * K, V), seqs.view(b * K, -1), no_repeat_ngram, canon)
    if valid:
        valid.mask_(logp.view(b * K, V), state.view(b * K, 3), steps_left)
    # a finished beam may only "continue" with EOS at no cost (in place: no (b, K, V) copies)
    logp.masked_fill_(done[..., None], float("-inf"))
    if eos_id >= 0:
        logp[..., eos_id].masked_fill_(done, 0.0)
    cand = logp.add_(scores[..., None]).view(b, K * V)  # in place: logp is not read again
    scores, flat = cand.topk(K, dim=-1)  # (b, K)
    return scores, flat // V, flat % V


def _live_beam_step(logits, live, scores, done, seqs, state, valid, no_repeat_ngram, canon, eos_id, steps_left):
    """_beam_step from the logits (n, V) of the unfinished beams alone (rows `live` of the b*K): each
    offers its K best continuations, a finished beam EOS at no cost, and the K best of those are the K
    best of _beam_step's b*K*V (the same tokens)."""
    b, K = scores.shape
    logp = logits.float().log_softmax(-1)  # (n, V)
    if no_repeat_ngram:
        ban_repeats_(logp, seqs.view(b * K, -1)[live], no_repeat_ngram, canon)
    if valid:
        valid.mask_(logp, state.view(b * K, 3)[live], steps_left)
    top, token = logp.topk(K, dim=-1)  # (n, K)
    cand = torch.full((b * K, K), float("-inf"), device=logp.device)
    cand[:, 0].masked_fill_(done.view(-1), 0.0)
    cand[live] = top
    tokens = torch.full((b * K, K), max(eos_id, 0), dtype=torch.long, device=logp.device)
    tokens[live] = token
    scores, flat = (cand.view(b, K, K) + scores[..., None]).view(b, K * K).topk(K, dim=-1)  # (b, K)
    return scores, flat // K, tokens.view(b, K * K).gather(1, flat)


# ----------------------------------------------------------------------------------------------
# greedy decoding on fixed shapes, one CUDA graph a token step


def _choose(s, eos_id, valid, steps_left):
    """Each row's next token from s["logits"] (B, V): greedy, valid text, [EOS] once done."""
    if valid:
        valid.mask_(s["logits"], s["state"], steps_left)
    return s["logits"].argmax(-1).masked_fill(s["done"], eos_id)


def _static_step(decoder, s, eos_id, valid, max_new_tokens):
    """One greedy step on fixed shapes and in place: choose each row's token from s["logits"] (B, V),
    write it, then run it through the decoder at position s["pos"] into s["logits"]. No Python
    number depends on the step and nothing leaves the device, so the step can be one CUDA graph."""
    nxt = _choose(s, eos_id, valid, (max_new_tokens - 1) - s["t"])  # (B,)
    if valid:
        s["state"].copy_(valid.advance(s["state"], nxt))
    s["out"].index_copy_(1, s["t"], nxt[:, None])
    s["done"].logical_or_(nxt == eos_id)
    s["t"].add_(1)
    # the decoder on one position: Decoder.forward's arithmetic, the cache written at a position
    # held in a tensor and every key position masked beyond it
    cache, rows, pos = s["cache"], s["rows"], s["pos"]
    B, D, H = nxt.shape[0], decoder.d_model, decoder.n_head
    x = decoder.tok_emb(nxt)[:, None] + decoder.pos_emb(pos)[None]  # (B, 1, D)
    if "cond" in rows:
        x = x + rows["cond"][:, None]
    seen = (torch.arange(cache.k.shape[3], device=x.device) <= pos)[None, None, None]  # (1, 1, 1, T_max)
    for i, block in enumerate(decoder.blocks):
        q, k, v = block.qkv(block.ln1(x)).view(B, 1, 3, H, D // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, 1, hd)
        cache.k[i].index_copy_(2, pos, k.to(cache.k.dtype))
        cache.v[i].index_copy_(2, pos, v.to(cache.v.dtype))
        y = torch.nn.functional.scaled_dot_product_attention(q, cache.k[i].to(q.dtype), cache.v[i].to(q.dtype),
                                                             attn_mask=seen)
        x = x + block.proj(y.transpose(1, 2).reshape(B, 1, D))
        x = x + block.mlp(block.ln2(x))
    # the tied output layer and the prior as Decoder.token_logits; coverage below, counted in place
    h = decoder.ln_f(x)
    logits = decoder.token_logits(h, rows, None, None)[:, 0]  # (B, V)
    if decoder.prior_used is not None:  # the written tokens, this one included (Decoder.use_up_prior)
        used = rows["used"]
        used.scatter_(1, nxt[:, None], torch.ones(B, 1, device=used.device, dtype=used.dtype))
        share = decoder.prior_used * decoder.prior_gate(h)[:, 0]  # (B, 1)
        logits = logits - (share * rows["boost"] * used).to(logits.dtype)
    if decoder.coverage is not None:  # the written counts, this token included (Decoder.penalise_written)
        written = rows["written"]
        written.scatter_add_(1, nxt[:, None], torch.ones(B, 1, device=written.device, dtype=written.dtype))
        logits = logits - (decoder.coverage * written).to(logits.dtype)
    s["logits"].copy_(logits)
    pos.add_(1)


def _count_written(decoder, cache):
    """_static_step's rows of the tokens written, from the inputs the first call kept (cache.rows
    "history"), on fixed shapes: "used" marks them and "written" counts them (B, V)."""
    history = cache.rows.pop("history", None)
    cache.of_tokens.discard("history")
    if history is None:
        return
    shape = (history.shape[0], decoder.tok_emb.num_embeddings)
    ones = torch.ones(history.shape, device=history.device)
    if decoder.prior_used is not None:
        cache.rows["used"] = torch.zeros(shape, device=history.device).scatter_(1, history, ones)
    if decoder.coverage is not None:
        cache.rows["written"] = torch.zeros(shape, device=history.device).scatter_add_(1, history, ones)


class _Plans(dict):
    """greedy_static's graphs and buffers on a decoder, by batch shape: made again, never copied
    (a copied or pickled decoder starts without them; a CUDA graph cannot be copied)."""

    def __deepcopy__(self, memo):
        return _Plans()

    def __reduce__(self):
        return _Plans, ()


def can_decode_static(decoder):
    """Whether greedy_static handles this decoder: recon's own transformer (type Decoder, pre-LN
    Block layers, no copy mechanism), the one _static_step writes out again."""
    from recon.decoder import Block, Decoder
    return type(decoder) is Decoder and decoder.block_class is Block


@torch.no_grad()
def greedy_static(decoder, vectors, bos_id, eos_id, max_new_tokens=None, valid=None, cuda_graph=None):
    """greedy()'s tokens on fixed shapes: finished rows stay in the batch (to the next check every
    8 tokens, when all may have ended), and on CUDA (cuda_graph None or True) each token step is one
    replay of a CUDA graph: a small decoder's step is a few hundred kernel launches, which cost more
    than their arithmetic. The graph and its buffers are made once per batch shape and kept on the
    decoder (`_static_plans`), so later batches of that shape replay it. Greedy only, without the
    no-repeat ban (it reads how many tokens were written) and without sampling; ValidText and the
    decoder's coverage and prior (used up or not) hold. (B, Dv) vectors -> list of B token-id lists
    (without [BOS] and [EOS])."""
    if not can_decode_static(decoder):
        raise ValueError(f"greedy_static decodes recon's transformer decoder, not {type(decoder).__name__}: use greedy()")
    B, device = vectors.shape[0], vectors.device
    graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    if graph and device.type != "cuda":
        raise ValueError("a CUDA graph needs a CUDA device; on this one pass cuda_graph=False")
    max_new_tokens = min(max_new_tokens or decoder.max_target_len, decoder.max_target_len + 1)
    plans = decoder.__dict__.setdefault("_static_plans", _Plans())
    precision = _precision(decoder, device)
    key = (B, max_new_tokens, eos_id, str(device), graph, id(valid), precision)
    plan = plans.get(key)
    cache = plan["s"]["cache"] if plan else decoder.new_cache(B, device, _cache_dtype(decoder, device))
    cache.pos = 0
    with autocast(device, precision):  # the prefix and [BOS], as greedy() runs them, into this shape's cache
        logits = decoder(vectors, torch.full((B, 1), bos_id, dtype=torch.long, device=device), cache)
    _count_written(decoder, cache)
    if plan is None:
        s = {"cache": cache, "rows": cache.rows, "logits": logits[:, -1].clone(),
             "pos": torch.tensor([cache.pos], device=device), "t": torch.zeros(1, dtype=torch.long, device=device),
             "out": torch.full((B, max_new_tokens), eos_id, dtype=torch.long, device=device),
             "done": torch.zeros(B, dtype=torch.bool, device=device), "state": valid.start(B) if valid else None}
        step = lambda: _static_step(decoder, s, eos_id, valid, max_new_tokens)  # noqa: E731
        # `valid` is kept with the plan: its tensors are read by the step (and by a graph, by address)
        plan = plans[key] = {"s": s, "step": _captured(step, s, device, precision) if graph else step, "valid": valid}
    else:  # this batch's values into the buffers the step (or its graph) reads
        s = plan["s"]
        for name, t in cache.rows.items():
            s["rows"][name].copy_(t)
        cache.rows = s["rows"]
        s["logits"].copy_(logits[:, -1])
        s["pos"].fill_(cache.pos)
        s["t"].zero_()
        s["out"].fill_(eos_id)
        s["done"].zero_()
        if valid:
            s["state"].copy_(valid.start(B))
    for t in range(max_new_tokens - 1):
        with autocast(device, precision):
            plan["step"]()
        if t % 8 == 7 and bool(s["done"].all()):  # one host sync every 8 tokens
            break
    else:  # the last token: chosen, not run through the decoder (nor written past the cache's end)
        s["out"][:, -1] = _choose(s, eos_id, valid, 0)
    return [_strip(row, eos_id) for row in s["out"].cpu()]


def _captured(step, s, device, precision):
    """`step` recorded once as a CUDA graph in `precision` (after one run to warm up, whose effects are
    undone); returns the graph's replay."""
    bf16 = precision == "bf16"
    mutable = [t for t in (s["logits"], s["pos"], s["t"], s["out"], s["done"], s["state"],
                           s["rows"].get("written")) if t is not None]
    saved = [t.clone() for t in mutable]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        step()  # kernels chosen and workspaces allocated outside the capture
    torch.cuda.current_stream(device).wait_stream(side)
    for t, was in zip(mutable, saved):
        t.copy_(was)  # the cache's keys and values at the warm-up's position are written again by the first replay
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        step()
    return graph.replay
