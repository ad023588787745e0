"""Vector feedback's rate (recon/feedback.py), read off one split: for each rate, the loop with its
feedback and with another sentence's residual (the no-feedback ablation), every step printed.

    python experiments/feedback_rates.py checkpoints/default validation 4 1 0.05,0.1,0.15,0.2,0.3,1
        4 greedy steps at each rate (about 20 s a rate and condition on 2 cores)

Arguments: checkpoint, split, steps, beams a step (the candidates kept), comma-separated rates.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.evaluation import cosine  # noqa: E402
from recon.feedback import feedback_loop  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

ckpt, split, steps, beam = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rates = [float(r) for r in sys.argv[5].split(",")]
model = ReconModel.from_pretrained(ckpt)
texts = model.training_corpus().texts(split)
vectors = model.encode(texts)
target = model.decoder.standardize(vectors)
print(f"{ckpt}, {split} split ({len(texts)} texts), {steps} steps of {beam} beam(s), 3-gram ban")
print("| rate | condition | BLEU by step | token F1, last step | cosine (std.), last step | s |")
print("|---:|---|---|---:|---:|---:|")
for rate in rates:
    for feedback in (True, False):
        outputs, seconds = feedback_loop(model, vectors, steps, beam, feedback, rate, no_repeat_ngram=3)
        scores = [corpus_scores(preds, texts) for preds in outputs]
        c = cosine(model.decoder.standardize(model.encode(outputs[-1])), target).mean()
        curve = " / ".join(f"{s['bleu']:.2f}" for s in scores)
        print(f"| {rate:g} | {'feedback' if feedback else 'another sentence residual'} | {curve} | "
              f"{scores[-1]['token_f1']:.2f} | {c:.3f} | {sum(seconds):.0f} |", flush=True)
