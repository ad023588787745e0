"""Vector feedback: a plain decoder corrected through its input, with no model trained for it.

The decoder D writes h = D(v) from a vector v; re-encoded, E(h) misses the target v* by a residual
r = v* - E(h). The loop moves the vector it decodes by a step of that residual,

    v_0 = v*,    v_k = v_{k-1} + rate * (v* - E(h_{k-1})),    h_k = D(v_k)  (greedy, or K beams),

and keeps, of every sentence it has written, the K whose re-encoded vectors are closest (standardised
cosine) to v*: a fixed-point search for the input whose output re-encodes to the target. It reads
nothing of a sentence but its vector and the vectors of its own outputs, as vec2text's corrector does,
and needs no training: any checkpoint's decoder runs it (`evaluate.py --correction-steps N` on a
plain checkpoint). Its no-feedback ablation moves each vector by another sentence's residual (the same
size and statistics, the wrong direction), so the two loops decode the same number of perturbed
vectors and keep their candidates the same way; only the direction differs.

Several decoders of the same vectors (the same command at other seeds: `ReconModel.add_companions`) each
run the loop on their own, and every sentence writes the closest of all their candidates (pooled_feedback):
they keep different candidates, and the vector tells them apart (docs/correction.md).
"""

import time

import torch
import torch.nn.functional as F

DEFAULT_RATE = 0.15  # chosen on the default run's validation split (docs/correction.md)


def out_of_time(seconds, max_seconds, steps, log):
    """True when a loop that has spent `seconds` (one entry a step, step 0 first) may start no more steps."""
    if not (max_seconds and sum(seconds) > max_seconds):
        return False
    if log:
        log(f"stopped after {len(seconds) - 1} of {steps} steps: --max-seconds {max_seconds:g} reached")
    return True


def encode_once(model, batch_size):
    """model.encode on the CPU in float32, each distinct text once: a candidate written again, at a later
    step or for another sentence, keeps the vector of its first encoding."""
    known = {}

    def encode(texts):
        new = [h for h in dict.fromkeys(texts) if h not in known]
        if new:
            known.update(zip(new, model.encode(new, batch_size).float().cpu()))
        return torch.stack([known[h] for h in texts]) if texts else model.encode([], batch_size).float().cpu()
    return encode


def feedback_loop(model, vectors, steps, beam=1, feedback=True, rate=None, seed=0, batch_size=256,
                  no_repeat_ngram=0, num_beams=1, length_penalty=1.0, log=None, no_repeat_match="loose", start=None,
                  max_seconds=0.0, return_kept=False, encode=None):
    """Correct a plain decoder's reconstructions of `vectors` (N, Dv) for `steps` steps through its input.

    beam: each step decodes the moved vectors with this many beams, and every sentence keeps the `beam`
    candidates so far (its first pass's included) closest to its target; the next step moves by the
    residual of this step's closest new candidate. num_beams > 1: the first pass is a beam search whose
    beams are all candidates (its closest, the rerank's choice, starts the trajectory); start: the first
    pass's outputs instead, a text or a list of texts per vector. feedback=False: each sentence moves by another
    sentence's residual (a new permutation each step, drawn from `seed`). rate: None for DEFAULT_RATE. Returns (outputs per step,
    step 0 the single pass or `start`; seconds per step), as recon.corrector.correct does;
    return_kept: also each sentence's kept candidates at the end, as (cosine, text), closest first.
    encode: an encode_once to share (its vectors reused, its cache filled); None: one of this loop's own.
    """
    rate = DEFAULT_RATE if rate is None else rate
    if rate <= 0:
        raise ValueError(f"the feedback rate must be above 0 (a step of the residual), not {rate}")
    dec = model.decoder
    gen = dict(batch_size=batch_size, no_repeat_ngram=no_repeat_ngram, no_repeat_match=no_repeat_match,
               length_penalty=length_penalty)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.time()
    target = torch.as_tensor(vectors).float().cpu()  # (N, Dv)
    if start is None and num_beams > 1:  # every beam of the first pass is a candidate
        start = [[h for h, _ in row] for row in model.decode_rows(target, num_beams=num_beams, return_all=True,
                                                                   **gen)[1]]
    if start is None:
        start = model.generate_from_vectors(target, **gen)
    encode = encode or encode_once(model, batch_size)
    pools = [list(dict.fromkeys([h] if isinstance(h, str) else h)) for h in start]
    flat = [h for p in pools for h in p]
    flat_vectors = encode(flat)  # (M, Dv)
    z_target = dec.standardize(target).cpu()
    owner = torch.tensor([i for i, p in enumerate(pools) for _ in p])
    sims = F.cosine_similarity(dec.standardize(flat_vectors).cpu(), z_target[owner], dim=-1)
    kept, picks, at = [], [], 0  # per sentence: (cosine, text), closest first
    for p in pools:
        order = sims[at:at + len(p)].argsort(descending=True).tolist()
        kept.append([(float(sims[at + j]), p[j]) for j in order][:max(beam, 1)])
        picks.append(at + order[0])
        at += len(p)
    last, last_vectors = [flat[j] for j in picks], flat_vectors[picks]  # (N, Dv)
    outputs, seconds, v = [last], [time.time() - t0], target.clone()
    for _ in range(steps):
        if out_of_time(seconds, max_seconds, steps, log):
            break
        t0 = time.time()
        residual = target - last_vectors  # (N, Dv)
        if not feedback:
            residual = residual[torch.randperm(len(residual), generator=generator)]
        v = v + rate * residual
        if beam == 1:
            new = [[h] for h in model.decode_rows(v, **gen)]
        else:
            _, beams = model.decode_rows(v, num_beams=beam, return_all=True, **gen)
            new = [list(dict.fromkeys(h for h, _ in row)) for row in beams]
        flat = [h for row in new for h in row]
        owner = torch.tensor([i for i, row in enumerate(new) for _ in row])
        flat_vectors = encode(flat)  # (M, Dv)
        sim = F.cosine_similarity(dec.standardize(flat_vectors).cpu(), z_target[owner], dim=-1)
        at, picks = 0, []
        for i, row in enumerate(new):
            s = sim[at:at + len(row)]
            j = int(s.argmax())
            picks.append(at + j)  # this step's closest new candidate: the trajectory's next residual
            seen = {h for _, h in kept[i]}
            pool = kept[i] + [(float(x), h) for x, h in zip(s.tolist(), row) if h not in seen]
            kept[i] = sorted(pool, key=lambda p: -p[0])[:beam]
            at += len(row)
        last_vectors = flat_vectors[picks]
        last = [flat[p] for p in picks]
        outputs.append([row[0][1] for row in kept])
        seconds.append(time.time() - t0)
        if log:
            log(f"feedback step {len(outputs) - 1} of {steps}: {seconds[-1]:.1f}s "
                f"({seconds[-1] / max(len(target), 1):.4f}s a sentence)")
    return (outputs, seconds, kept) if return_kept else (outputs, seconds)


def pooled_feedback(models, vectors, steps, beam=1, batch_size=256, max_seconds=0.0, return_kept=False, log=None,
                    encode=None, **kw):
    """feedback_loop on each of `models` (plain decoders of the same vectors), pooled: at every step each
    sentence writes, of the loops' outputs, the one whose re-encoded vector is closest to its target
    (standardised cosine, the first model's statistics): the closest of all the loops keep. Takes
    feedback_loop's arguments (max_seconds shared out among the loops) and returns what it returns, the
    seconds of each step summed over the loops; return_kept: every candidate the loops kept, closest first.
    The loops share one encode_once (the first model's encoder, which add_companions gives them all)."""
    def named(i):  # each loop's log lines say whose they are
        return log and (lambda line: log(f"decoder {i + 1} of {len(models)}, {line}"))
    encode = encode or encode_once(models[0], batch_size)
    runs = [feedback_loop(m, vectors, steps, beam, batch_size=batch_size, max_seconds=max_seconds / len(models),
                          return_kept=True, log=named(i), encode=encode, **kw) for i, m in enumerate(models)]
    dec = models[0].decoder
    z = dec.standardize(torch.as_tensor(vectors).float()).cpu()
    n = min(len(outputs) for outputs, _, _ in runs)  # a deadline may cut a loop short
    outputs = []
    for k in range(n):
        options = [run[0][k] for run in runs]  # per loop, per sentence
        sims = torch.stack([F.cosine_similarity(dec.standardize(encode(o)).cpu(), z, dim=-1) for o in options])
        outputs.append([options[m][i] for i, m in enumerate(sims.argmax(0).tolist())])
    seconds = [sum(run[1][k] for run in runs) for k in range(n)]
    if not return_kept:
        return outputs, seconds
    kept = []
    for i in range(len(z)):
        cands = list(dict.fromkeys(h for _, _, run_kept in runs for _, h in run_kept[i]))
        sim = F.cosine_similarity(dec.standardize(encode(cands)).cpu(), z[i][None], dim=-1)
        kept.append(sorted(zip(sim.tolist(), cands), key=lambda p: -p[0]))
    return outputs, seconds, kept
