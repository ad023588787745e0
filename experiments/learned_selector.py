"""Can a learned similarity choose vector feedback's candidates better than the standardised cosine?

The loop (recon/feedback.py) writes, of the candidates it keeps, the one whose standardised re-encoded
vector has the highest cosine to the target's: every dimension weighs the same. Here a weight a
dimension is learned, s = sum_d w_d u_d(target) u_d(candidate) over unit-length standardised vectors
(w = 1 is the cosine), on the loop's kept candidates for training sentences, to maximise the expected
sentence BLEU of the written candidate against its reference (a softmax over each sentence's
candidates). It reads only vectors at inference; the references are read in training only, as any
decoder's are. Then the validation split's kept candidates (feedback_select.py's --pool file) are
chosen again by the cosine and by the learned weights.

    python experiments/feedback_select.py checkpoints/default validation 6 8 0.15 --pool=val_pool.json
    python experiments/learned_selector.py checkpoints/default val_pool.json 2000 2

Arguments: checkpoint, the validation pool, training sentences, steps of the loop (8 beams, rate 0.15)
for the training pool (its candidates are saved to train_pool.json beside the validation pool).
"""
import json
import os
import random
import sys

import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.feedback import feedback_loop  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

ckpt, val_pool, n, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = ReconModel.from_pretrained(ckpt)
corpus = model.training_corpus()
train_texts = random.Random(0).sample(corpus.texts("train"), n)
train_pool = os.path.join(os.path.dirname(os.path.abspath(val_pool)), f"train_pool_{n}_{steps}.json")
if os.path.exists(train_pool):
    kept = json.load(open(train_pool))
else:
    _, _, kept = feedback_loop(model, model.encode(train_texts), steps, 8, True, 0.15, no_repeat_ngram=3,
                               return_kept=True)
    json.dump(kept, open(train_pool, "w"))
sb = BLEU(effective_order=True)


def tensors(texts, kept):
    """Unit-length standardised target and candidate vectors, sentence BLEU, and each candidate's row."""
    flat = [h for row in kept for _, h in row]
    owner = torch.tensor([i for i, row in enumerate(kept) for _ in row])
    t = F.normalize(model.decoder.standardize(model.encode(texts)).float(), dim=-1)[owner]
    c = F.normalize(model.decoder.standardize(model.encode(flat)).float(), dim=-1)
    b = torch.tensor([sb.sentence_score(h, [texts[i]]).score for h, i in zip(flat, owner.tolist())])
    return t, c, b, owner, flat


def pick(score, owner, flat, rows):
    best = torch.full((rows,), -1e9).scatter_reduce(0, owner, score, "amax")
    out = [None] * rows
    for j in range(len(flat)):  # the first candidate reaching its sentence's best score
        i = int(owner[j])
        if out[i] is None and score[j] >= best[i]:
            out[i] = flat[j]
    return out


t, c, b, owner, _ = tensors(train_texts, kept)
w = torch.ones(t.shape[1], requires_grad=True)
scale = torch.tensor(20.0, requires_grad=True)  # the softmax's sharpness over a sentence's candidates
opt = torch.optim.Adam([w, scale], lr=0.01)
for it in range(301):
    s = scale * (t * c * w).sum(-1)
    # a softmax within each sentence's candidates: subtract the sentence's max, normalise by its sum
    s = s - torch.zeros(len(kept)).scatter_reduce(0, owner, s.detach(), "amax", include_self=False)[owner]
    p = s.exp() / torch.zeros(len(kept)).scatter_add(0, owner, s.exp())[owner]
    loss = -(p * b).sum() / len(kept) + 1.0 * ((w - 1) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if it % 100 == 0:
        print(f"step {it}: expected sentence BLEU of the written candidate {-loss.item():.2f}", flush=True)

val_texts = corpus.texts("validation")
vt, vc, vb, vowner, vflat = tensors(val_texts, json.load(open(val_pool)))
with torch.no_grad():
    for name, score in [("standardised cosine", (vt * vc).sum(-1)), ("learned weights", (vt * vc * w).sum(-1)),
                        ("oracle (reads the reference)", vb)]:
        s = corpus_scores(pick(score, vowner, vflat, len(val_texts)), val_texts)
        print(f"| {name} | {s['bleu']:.2f} | {s['token_f1']:.2f} |")
print(f"weights: mean {w.mean():.3f}, min {w.min():.3f}, max {w.max():.3f}")
