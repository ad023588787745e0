"""Does a later round, trained on its corrector's own outputs, correct better than the same corrector
trained as many more steps on the base's hypotheses alone? Runs the correction loop of each
corrector (from the base's greedy pass, a sequence beam, with the feedback) and prints every step.

    python experiments/correction_rounds.py validation 4 4 checkpoints/exp/corr_ft_more checkpoints/exp/corr_ft_r2

Arguments: split, steps, sequence beam, then corrector checkpoints (the same base); evaluate.py
gives one of them with every ablation.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.corrector import correct  # noqa: E402
from recon.evaluation import cosine  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

split, steps, beam, checkpoints = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
print("| corrector | step | BLEU | exact match % | token F1 | cosine (std.) | s |")
print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
for ckpt in checkpoints:
    model = ReconModel.from_pretrained(ckpt)
    texts = model.training_corpus().texts(split)
    vectors = model.encode(texts)
    target = model.decoder.standardize(vectors)
    outputs, seconds = correct(model, vectors, steps, beam, no_repeat_ngram=3)
    for step, preds in enumerate(outputs):
        m = corpus_scores(preds, texts)
        c = cosine(model.decoder.standardize(model.base.encode(preds)), target).mean()
        print(f"| {ckpt} | {step} | {m['bleu']:.2f} | {m['exact_match']:.2f} | {m['token_f1']:.2f} | {c:.3f} | "
              f"{seconds[step]:.0f} |", flush=True)
