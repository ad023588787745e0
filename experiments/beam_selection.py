"""Which of a checkpoint's beams to keep? The top beam, the embedding rerank, minimum Bayes risk
(each beam's mean sentence BLEU or token F1 against the other beams), mixes of the rerank with
those, and the oracle (the beam nearest its reference: a ceiling, not a method).

    python experiments/beam_selection.py checkpoints/default 8 validation

Arguments: checkpoint, beams, split, and optionally how many texts. Beam search with evaluate.py's
repeat ban (3-gram, loose); prints one line per selector: corpus BLEU, token F1, standardised cosine.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.model import ReconModel
from recon.evaluation import cosine
from recon.metrics import corpus_scores, token_f1
from sacrebleu.metrics import BLEU

ckpt, K, split = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else None
torch.manual_seed(0)
model = ReconModel.from_pretrained(ckpt)
texts = model.training_corpus().texts(split)[:n]
t0 = time.time()
vectors = model.encode(texts)
_, beams = model.generate_from_vectors(vectors, num_beams=K, return_all=True, no_repeat_ngram=3)
t1 = time.time()
flat = [t for row in beams for t, _ in row]
cand = model.decoder.standardize(model.encode(flat))
tgt = model.decoder.standardize(vectors).repeat_interleave(K, 0)
cos = cosine(cand, tgt).view(len(texts), K)
t2 = time.time()
print(f"decode {t1-t0:.1f}s  re-encode {t2-t1:.1f}s", flush=True)
sb = BLEU(effective_order=True)
# MBR utilities among candidates: mean sentence BLEU / token F1 against the others
mbr_b, mbr_f = torch.zeros(len(texts), K), torch.zeros(len(texts), K)
for i, row in enumerate(beams):
    c = [t for t, _ in row]
    for a in range(K):
        others = [c[b] for b in range(K) if b != a]
        mbr_b[i, a] = sum(sb.sentence_score(c[a], [o]).score for o in others) / (K - 1)
        mbr_f[i, a] = sum(token_f1(c[a], o) for o in others) / (K - 1)
score = torch.tensor([[s for _, s in row] for row in beams])
print(f"mbr {time.time() - t2:.1f}s", flush=True)
def pick(idx):
    preds = [beams[i][j][0] for i, j in enumerate(idx.tolist())]
    m = corpus_scores(preds, texts)
    return m["bleu"], m["token_f1"], cos.gather(1, idx[:, None]).mean().item()
rows = {"top beam": torch.zeros(len(texts), dtype=torch.long), "cos rerank": cos.argmax(1),
        "mbr bleu": mbr_b.argmax(1), "mbr f1": mbr_f.argmax(1)}
def z(x): return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
for lam in (0.25, 0.5, 1, 2):
    rows[f"z(cos)+{lam} z(mbr bleu)"] = (z(cos) + lam * z(mbr_b)).argmax(1)
    rows[f"z(cos)+{lam} z(mbr f1)"] = (z(cos) + lam * z(mbr_f)).argmax(1)
    rows[f"z(cos)+{lam} z(score)"] = (z(cos) + lam * z(score)).argmax(1)
oracle = torch.tensor([max(range(K), key=lambda j: sb.sentence_score(row[j][0], [r]).score) for row, r in zip(beams, texts)])
rows["oracle sentence bleu"] = oracle
for k, idx in rows.items():
    b, f, c = pick(idx)
    print(f"{k:28s} BLEU {b:6.2f}  F1 {f:6.2f}  cos {c:.3f}")
