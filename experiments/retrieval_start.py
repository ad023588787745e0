"""A corrector that starts from the nearest training sentence instead of the base's own output.

The retrieval control (the training sentence whose vector is nearest the target) writes names, dates and
phrasing that the base decoder, from the vector alone, often misses; the corrector reads a hypothesis and its
vector beside the target. Here its hypothesis is that neighbour: trained on each training sentence's nearest
other training sentence (never itself or a copy of its text), then run from the target's nearest training
sentence. It reads nothing of the input but its vector: the neighbour is chosen by the vector alone.

    python experiments/retrieval_start.py train checkpoints/default checkpoints/exp/retrieval_corr [--target-noise=S]
        [train.py flags]
    python experiments/retrieval_start.py eval checkpoints/exp/retrieval_corr validation [--steps=2] [--beam=1]
        [--data=FILE]

`train` runs train.py --base-model BASE with the base's hypotheses replaced by neighbours (--hypotheses 0
--hypothesis-noise 0 are set: every training sentence, nothing decoded). `eval` prints, for each step,
corpus BLEU, token F1, exact match and the standardised cosine, beside the retrieval start itself.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import recon.prepare as prepare  # noqa: E402
from recon.corrector import correct, noised_rows  # noqa: E402
from recon.evaluation import cosine  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402


def nearest(base, pool_vectors, vectors, k=1, exclude=None):
    """Indices (N, k) of the pool's k nearest vectors to each of `vectors` (standardised cosine): the top-k
    recon.evaluation.nearest, with exclusions. exclude[i]: pool indices row i may not take (itself, copies of
    its text)."""
    zp = F.normalize(base.decoder.standardize(pool_vectors).float(), dim=-1)
    zq = F.normalize(base.decoder.standardize(vectors).float(), dim=-1)
    exclude = exclude or []
    rows = torch.tensor([i for i, js in enumerate(exclude) for _ in js], dtype=torch.long)
    cols = torch.tensor([j for js in exclude for j in js], dtype=torch.long)
    out = []
    for s in range(0, len(zq), 1024):
        sim = zq[s:s + 1024] @ zp.T
        here = (rows >= s) & (rows < s + len(sim))
        sim[rows[here] - s, cols[here]] = -2.0  # below any cosine
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


class Pool:
    """The base's training sentences (no copies) and their vectors: what a neighbour is drawn from."""

    def __init__(self, base):
        self.base = base
        self.texts = base.training_corpus().texts("train", copies=False)
        self.vectors = base.encode(self.texts)
        self.where = {}
        for j, t in enumerate(self.texts):
            self.where.setdefault(t, []).append(j)

    def neighbours(self, vectors, texts, k=1):
        exclude = [self.where.get(t, []) for t in texts]  # a training sentence never starts from itself
        return nearest(self.base, self.vectors, vectors, k, exclude)


def neighbour_rows(pool, target_noise=0.0):
    """A stand-in for recon.corrector.hypothesis_rows: the neighbour, not the base's output, as hypothesis.
    target_noise: the training rows' target vectors get Gaussian noise of this std (standardised units, one
    draw), so that the base's memory of its training sentences no longer writes them from the vector alone."""
    def rows(base, corrector, vectors, texts, cache_dir, no_repeat_ngram, log, batch_size=256, noise=0.0):
        idx = pool.neighbours(vectors, texts)[:, 0].tolist()
        hyps = [pool.texts[j] for j in idx]
        log(f"{len(texts)} neighbours as hypotheses (retrieval_start.py)")
        out = corrector.rows(vectors, pool.vectors[idx], base.tokenizer.encode(hyps))
        if target_noise and texts[0] in pool.where:  # the training split's rows
            out = noised_rows(base, out, corrector.vector_dim, target_noise)
        return out, hyps
    return rows


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "train":
        noise = [float(a.split("=")[1]) for a in args if a.startswith("--target-noise=")]
        args = [a for a in args if not a.startswith("--target-noise=")]
        base_dir, out = args[0], args[1]
        prepare.hypothesis_rows = neighbour_rows(Pool(ReconModel.from_pretrained(base_dir)), (noise or [0.0])[0])
        import train
        flags = ["--base-model", base_dir, "--output-dir", out, "--hypotheses", "0", "--hypothesis-noise", "0"]
        sys.exit(train.main(flags + args[2:]))
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--"))
    ckpt, split = [a for a in args if not a.startswith("--")]
    steps, beam = int(opts.get("steps", 2)), int(opts.get("beam", 1))
    model = ReconModel.from_pretrained(ckpt)
    base = model.base
    texts = open(opts["data"]).read().splitlines() if "data" in opts else base.training_corpus().texts(split)
    vectors = base.encode(texts)
    pool = Pool(base)
    idx = pool.neighbours(vectors, texts, k=beam)
    start = [[pool.texts[j] for j in row] for row in idx.tolist()]
    target = base.decoder.standardize(vectors)
    outputs, seconds = correct(model, vectors, steps, beam, no_repeat_ngram=3, start=start)
    for step, preds in enumerate(outputs):
        m = corpus_scores(preds, texts)
        c = cosine(base.decoder.standardize(base.encode(preds)), target).mean()
        name = "the nearest training sentence" if step == 0 else f"step {step}"
        print(f"{name}: BLEU {m['bleu']:.2f}  token F1 {m['token_f1']:.2f}  exact {m['exact_match']:.2f}%  "
              f"cosine (std.) {c:.3f}  ({seconds[step]:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
