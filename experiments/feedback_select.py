"""Which of vector feedback's kept candidates to write? The loop (recon/feedback.py) keeps the K whose
re-encoded vectors are closest to the target and writes the closest. Here the same K are chosen
again: by the raw vectors' cosine and the standardised vectors' distance, by the decoder's own likelihood of each under the target vector (mean log-probability a
token, teacher-forced), by its bag-of-words head (the mean log-probability of the candidate's
distinct tokens), by the cosine mixed with each (z-scored within a sentence's candidates), by
consensus among the kept (minimum Bayes risk: the candidate with the highest mean sentence BLEU or
token F1 against the others, alone, weighted by the others' cosine, or mixed with the cosine), and by
the oracle (the candidate nearest its reference by sentence BLEU: a ceiling, not a method).

    python experiments/feedback_select.py checkpoints/default validation 6 8 0.15 [--data=FILE]

Arguments: checkpoint, split, steps, beams a step (the candidates kept), rate. --pool=FILE saves the
kept candidates to FILE (JSON), or reads them from it when it exists; --data=FILE (one text a line)
replaces the split's texts. About 5 minutes on 2 cores for the validation split at 6 steps of beam 8.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.feedback import feedback_loop  # noqa: E402
from recon.metrics import corpus_scores, token_f1  # noqa: E402
from recon.model import ReconModel  # noqa: E402

opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
args = [a for a in sys.argv[1:] if not a.startswith("--")]
ckpt, split, steps, beam, rate = args[0], args[1], int(args[2]), int(args[3]), float(args[4])
model = ReconModel.from_pretrained(ckpt)
texts = open(opts["data"]).read().splitlines() if "data" in opts else model.training_corpus().texts(split)
vectors = model.encode(texts)
if "pool" in opts and os.path.exists(opts["pool"]):
    kept = json.load(open(opts["pool"]))
else:
    _, _, kept = feedback_loop(model, vectors, steps, beam, True, rate, no_repeat_ngram=3, return_kept=True)
    if "pool" in opts:
        json.dump(kept, open(opts["pool"], "w"))


@torch.no_grad()
def mean_logp(vecs, cands, batch=256):
    """Mean log-probability a token (with [EOS]) of each text under the decoder given its vector."""
    c, out = model.config, []
    model.decoder.eval()
    for s in range(0, len(cands), batch):
        ids = [(x + [c.eos_id])[:64] for x in model.tokenizer.encode(cands[s:s + batch])]  # within the positions
        T = max(map(len, ids))
        targets = torch.tensor([x + [c.pad_id] * (T - len(x)) for x in ids])
        lp = -model.loss(vecs[s:s + batch].float(), targets, reduction="none").view(targets.shape)  # 0 at pads
        out.append(lp.sum(1) / (targets != c.pad_id).sum(1))
    return torch.cat(out)


@torch.no_grad()
def bow_score(vecs, cands):
    """Mean log-probability of a text's distinct tokens under the decoder's bag-of-words head."""
    lps = model.decoder.bow_logprobs(model.decoder.standardize(vecs.float()))
    return torch.tensor([float(lps[i, sorted(set(x))].mean()) if x else float("-inf")
                         for i, x in enumerate(model.tokenizer.encode(cands))])


flat = [h for row in kept for _, h in row]
owner = [i for i, row in enumerate(kept) for _ in row]
cos = torch.tensor([s for row in kept for s, _ in row])
lp = mean_logp(vectors[owner], flat)
bow = bow_score(vectors[owner], flat)
e = model.encode(flat).float()  # the candidates' vectors, raw
raw_cos = F.cosine_similarity(e, vectors[owner].float(), dim=-1)
neg_l2 = -(model.decoder.standardize(e) - model.decoder.standardize(vectors[owner].float())).norm(dim=-1)
sb = BLEU(effective_order=True)
sbleu = torch.tensor([sb.sentence_score(h, [texts[i]]).score for h, i in zip(flat, owner)])


def z(x, rows):
    out, at = torch.zeros_like(x), 0
    for n in rows:
        seg = x[at:at + n]
        out[at:at + n] = (seg - seg.mean()) / (seg.std() + 1e-6) if n > 1 else 0
        at += n
    return out


rows = [len(r) for r in kept]
zc, zl, zb = z(cos, rows), z(lp, rows), z(bow, rows)


def consensus(utility, weighted=False):
    """Each candidate's mean utility against the sentence's other kept candidates (weights exp(z(cosine)))."""
    out, at = torch.zeros(len(flat)), 0
    for n in rows:
        w = torch.exp(zc[at:at + n]) if weighted else torch.ones(n)
        for a in range(n):
            others = [b for b in range(n) if b != a]
            if others:
                u = torch.tensor([utility(flat[at + a], flat[at + b]) for b in others])
                out[at + a] = float((u * w[others]).sum() / w[others].sum())
        at += n
    return out


mbr_b = consensus(lambda h, o: sb.sentence_score(h, [o]).score)
mbr_bw = consensus(lambda h, o: sb.sentence_score(h, [o]).score, weighted=True)
mbr_f = consensus(token_f1)
zm = z(mbr_b, rows)
zn = z(torch.tensor([float(len(h.split())) for h in flat]), rows)  # length in words


def pick(score):
    out, at = [], 0
    for n in rows:
        out.append(flat[at + int(score[at:at + n].argmax())])
        at += n
    return out


print(f"{ckpt}, {split} ({len(texts)} texts): {steps} steps of beam {beam} at rate {rate}, "
      f"{sum(rows) / len(rows):.1f} kept candidates a sentence")
print("| selector | BLEU | token F1 | brevity penalty |")
print("|---|---:|---:|---:|")
selectors = {"cosine (the loop's)": cos, "cosine of the raw vectors": raw_cos,
             "distance of the standardised vectors (nearest)": neg_l2, "decoder log-probability": lp}
selectors.update({f"z(cosine) + {w:g} z(log-probability)": zc + w * zl for w in (0.25, 0.5, 1.0)})
selectors["bag-of-words head: mean log-probability of the distinct tokens"] = bow
selectors.update({f"z(cosine) + {w:g} z(bag of words)": zc + w * zb for w in (0.25, 0.5, 1.0)})
selectors["consensus: mean sentence BLEU against the other kept"] = mbr_b
selectors["consensus: the same, the others weighted by exp(z(cosine))"] = mbr_bw
selectors["consensus: mean token F1 against the other kept"] = mbr_f
selectors.update({f"z(cosine) + {w:g} z(consensus BLEU)": zc + w * zm for w in (0.25, 0.5, 1.0, 2.0)})
selectors.update({f"z(cosine) + {w:g} z(length in words)": zc + w * zn for w in (0.25, 0.5)})
selectors["oracle: sentence BLEU against the reference (reads it)"] = sbleu
for name, score in selectors.items():
    chosen = pick(score)
    s = corpus_scores(chosen, texts)
    bp = BLEU().corpus_score(chosen, [texts]).bp
    print(f"| {name} | {s['bleu']:.2f} | {s['token_f1']:.2f} | {bp:.3f} |", flush=True)
