"""Several decoders of the same vectors, one choice: each checkpoint (the default command at other seeds:
the same encoder, the same data) runs vector feedback on its own (6 steps of 8 beams at rate 0.15 after
an 8-beam first pass, the default evaluation's loop), and every sentence writes the candidate, from any
of their kept pools, whose re-encoded vector is closest to its target. Optionally a corrector of the
first checkpoint then rewrites the union's closest candidates, its target slot moved as in
corrector_feedback.py's aftermoved.

    python experiments/pool_union.py validation checkpoints/default checkpoints/exp/def_s1 checkpoints/exp/def_s2 \
        --corrector=checkpoints/exp/corr_s0

Arguments: a split, then checkpoints (the first one's greedy pass and standardisation are the yardstick).
Prints BLEU and token F1 of each pool alone, each pair's and all of them together, and then the
corrector's loop (4 steps, 4 x 4, rate 0.15) from the union of all. --pools=PREFIX keeps each
checkpoint's pool in PREFIX_<its folder's name>.json (read when it exists). Reads nothing of a sentence but its vector and
its candidates' vectors.
"""
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from corrector_feedback import corrector_loop  # noqa: E402
from recon.feedback import feedback_loop  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
args = [a for a in sys.argv[1:] if not a.startswith("--")]
split, ckpts = args[0], args[1:]
first = ReconModel.from_pretrained(ckpts[0])
texts = first.training_corpus().texts(split)
vectors = first.encode(texts).float().cpu()
target = first.decoder.standardize(vectors).cpu()

pools = []
for i, ckpt in enumerate(ckpts):
    path = f"{opts['pools']}_{os.path.basename(os.path.normpath(ckpt))}.json" if "pools" in opts else None
    if path and os.path.exists(path):
        pools.append(json.load(open(path)))
        continue
    model = first if i == 0 else ReconModel.from_pretrained(ckpt)
    _, _, kept = feedback_loop(model, vectors, 6, 8, True, 0.15, no_repeat_ngram=3, num_beams=8, return_kept=True)
    pools.append([[text for _, text in row] for row in kept])
    if path:
        json.dump(pools[-1], open(path, "w"))
pools = [[[c if isinstance(c, str) else c[1] for c in row] for row in p] for p in pools]  # (cosine, text) or text

flat = sorted({t for p in pools for row in p for t in row})
seen = dict(zip(flat, first.decoder.standardize(first.encode(flat).float()).cpu()))


def ranked(which):
    """Each sentence's candidates from the pools `which`, closest to its target first."""
    out = []
    for i in range(len(texts)):
        cands = list(dict.fromkeys(t for p in which for t in p[i]))
        sims = F.cosine_similarity(torch.stack([seen[t] for t in cands]), target[i][None], dim=-1)
        out.append([cands[j] for j in sims.argsort(descending=True).tolist()])
    return out


greedy = first.generate_from_vectors(vectors, no_repeat_ngram=3)
print(f"{split} split ({len(texts)} texts), 3-gram ban; yardstick {ckpts[0]}: greedy BLEU "
      f"{corpus_scores(greedy, texts)['bleu']:.2f}")
print("| pools | BLEU | token F1 | cosine (std.) |\n|---|---:|---:|---:|")
for n in range(1, len(pools) + 1):
    for combo in itertools.combinations(range(len(pools)), n):
        best = [row[0] for row in ranked([pools[i] for i in combo])]
        s = corpus_scores(best, texts)
        cos = F.cosine_similarity(torch.stack([seen[t] for t in best]), target, dim=-1).mean()
        print(f"| {' + '.join(ckpts[i] for i in combo)} | {s['bleu']:.2f} | {s['token_f1']:.2f} | {float(cos):.3f} |",
              flush=True)
if "corrector" in opts:
    corr = ReconModel.from_pretrained(opts["corrector"])
    outputs, seconds = corrector_loop(corr, vectors, ranked(pools), 4, 4, 0.15)
    print(f"\n{opts['corrector']} after the union of all, slot moved at 0.15, 4 x 4: BLEU by step "
          + " / ".join(f"{corpus_scores(o, texts)['bleu']:.2f}" for o in outputs)
          + f"; token F1 {corpus_scores(outputs[-1], texts)['token_f1']:.2f}; "
          f"{sum(seconds[1:]) / max(len(seconds) - 1, 1) / len(texts):.4f} s a sentence a step")
