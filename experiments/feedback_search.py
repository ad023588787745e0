"""How vector feedback (recon/feedback.py) searches: one trajectory a sentence (the library's loop)
against a best-first tree, where every candidate carries the vector it was decoded from and the K
closest candidates not yet expanded are each moved by their own residual and decoded.

    python experiments/feedback_search.py checkpoints/default validation line:0.15:6:8 tree:0.15:6:8:1

Arguments: checkpoint, split, then variants, each printed with its BLEU after every step:
    line:RATE:STEPS:BEAM[:FIRST]  the library's loop (one moved vector a sentence, BEAM beams a step; the
                               first pass greedy, or FIRST beams, every one a candidate)
    blind:RATE:STEPS:BEAM      its no-feedback ablation (each vector moved by another sentence's residual)
    tree:RATE:STEPS:K:B        best-first: the K closest unexpanded candidates, each decoded with B beams
                               (the first pass's output, the only candidate at step 1, with K * B)
Optional --data=FILE (one text a line) replaces the split's texts; --n=N keeps the first N. The 3-gram ban (loose) throughout.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.feedback import feedback_loop  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

GEN = dict(no_repeat_ngram=3)


def tree_loop(model, vectors, steps, rate, k, b):
    """Best-first vector feedback; returns (outputs per step, seconds per step) as feedback_loop does."""
    dec, t0 = model.decoder, time.time()
    target = vectors.float().cpu()
    z = dec.standardize(target).cpu()
    first = model.decode_rows(target, **GEN)
    e = model.encode(first).float().cpu()
    sims = F.cosine_similarity(dec.standardize(e).cpu(), z, dim=-1)
    # per sentence: candidates as [cosine, text, vector it came from, its re-encoded vector, expanded?]
    pool = [[[float(s), h, target[i], e[i], False]] for i, (s, h) in enumerate(zip(sims.tolist(), first))]
    outputs, seconds = [first], [time.time() - t0]
    for _ in range(steps):
        t0 = time.time()
        rows, owner, parent = [], [], []
        for i, cands in enumerate(pool):
            for c in sorted((c for c in cands if not c[4]), key=lambda c: -c[0])[:k]:
                c[4] = True
                rows.append(c[2] + rate * (target[i] - c[3]))
                owner.append(i)
        v = torch.stack(rows)
        nb = k * b if len(outputs) == 1 else b  # the root is expanded into k * b beams, later candidates into b
        if nb == 1:
            new = [[h] for h in model.decode_rows(v, **GEN)]
        else:
            _, beams = model.decode_rows(v, num_beams=nb, return_all=True, **GEN)
            new = [list(dict.fromkeys(h for h, _ in row)) for row in beams]
        flat = [h for row in new for h in row]
        src = [r for r, row in enumerate(new) for _ in row]
        ev = model.encode(flat).float().cpu()
        sim = F.cosine_similarity(dec.standardize(ev).cpu(), z[[owner[r] for r in src]], dim=-1)
        for j, (h, r) in enumerate(zip(flat, src)):
            i = owner[r]
            if all(h != c[1] for c in pool[i]):
                pool[i].append([float(sim[j]), h, v[r], ev[j], False])
        outputs.append([max(cands, key=lambda c: c[0])[1] for cands in pool])
        seconds.append(time.time() - t0)
    return outputs, seconds


opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
args = [a for a in sys.argv[1:] if not a.startswith("--")]
ckpt, split, variants = args[0], args[1], args[2:]
model = ReconModel.from_pretrained(ckpt)
texts = open(opts["data"]).read().splitlines() if "data" in opts else model.training_corpus().texts(split)
texts = texts[:int(opts.get("n", len(texts)))]
vectors = model.encode(texts)
target = model.decoder.standardize(vectors)
print(f"{ckpt}, {opts.get('data', split + ' split')} ({len(texts)} texts), 3-gram ban")
print("| variant | BLEU by step | token F1, last | cosine (std.), last | s a sentence a step |")
print("|---|---|---:|---:|---:|")
for variant in variants:
    kind, *p = variant.split(":")
    if kind in ("line", "blind"):
        first = dict(num_beams=int(p[3])) if len(p) > 3 else {}
        outputs, seconds = feedback_loop(model, vectors, int(p[1]), int(p[2]), kind == "line", float(p[0]), **GEN,
                                         **first)
    else:
        outputs, seconds = tree_loop(model, vectors, int(p[1]), float(p[0]), int(p[2]), int(p[3]))
    scores = [corpus_scores(preds, texts) for preds in outputs]
    c = F.cosine_similarity(model.decoder.standardize(model.encode(outputs[-1])).float(), target.float(), dim=-1)
    curve = " / ".join(f"{s['bleu']:.2f}" for s in scores)
    per = sum(seconds[1:]) / max(len(seconds) - 1, 1) / len(texts)
    print(f"| {variant} | {curve} | {scores[-1]['token_f1']:.2f} | {c.mean():.3f} | {per:.4f} |", flush=True)
