"""Where should the correction loop start? From the base's greedy single pass (what `correct()`
does), or from the base's own beams reranked by the cosine of their re-encoded vectors (the
sequence beam begun at step 0)? Runs the loop from the reranked beams, with and without feedback,
and prints every step; the greedy start's figures are evaluate.py's (docs/correction.md).

    python experiments/correction_start.py checkpoints/corrector validation 2 4

Arguments: corrector checkpoint, split, steps, sequence beam (also the base's beams), and
optionally how many texts.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.corrector import correct  # noqa: E402
from recon.evaluation import cosine  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

ckpt, split, steps, beam = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
n = int(sys.argv[5]) if len(sys.argv) > 5 else None
model = ReconModel.from_pretrained(ckpt)
texts = model.training_corpus().texts(split)[:n]
vectors = model.encode(texts)
base, target = model.base, model.decoder.standardize(vectors)
t0 = time.time()
_, beams = base.generate_from_vectors(vectors, num_beams=beam, return_all=True, no_repeat_ngram=3)
flat = [text for row in beams for text, _ in row]
cos = cosine(model.decoder.standardize(base.encode(flat)), target.repeat_interleave(beam, 0)).view(len(texts), beam)
start = [row[j][0] for row, j in zip(beams, cos.argmax(1).tolist())]
print(f"the base's {beam} beams, reranked: {time.time() - t0:.0f}s", flush=True)
for feedback in (True, False):
    outputs, seconds = correct(model, vectors, steps, beam, feedback=feedback, no_repeat_ngram=3, start=start)
    for step, preds in enumerate(outputs):
        m = corpus_scores(preds, texts)
        c = cosine(model.decoder.standardize(base.encode(preds)), target).mean()
        print(f"{'correction' if feedback else 'no feedback'}, step {step}: BLEU {m['bleu']:.2f}  exact {m['exact_match']:.2f}%  "
              f"token F1 {m['token_f1']:.2f}  cosine (std.) {c:.3f}  ({seconds[step]:.0f}s)", flush=True)
