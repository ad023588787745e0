"""Does an exponential moving average of the decoder's weights write more than the weights
themselves? One training run gives a paired answer: the run trains as it would (the averages are
kept beside it and change nothing), then the final weights, the weights at one earlier step and
each average decode the same split greedily with the default repeat ban.

    python experiments/ema.py --output-dir checkpoints/exp/ema_s0                  # the default run, validation split
    python experiments/ema.py --output-dir checkpoints/exp/ema_s1 --seed 1

Any train.py flag may follow; --eval-split validation is added unless given. Prints one line per
set of weights: corpus BLEU, token F1, exact match, standardised cosine of the re-encoded output.
An average's decay is warmed up as min(decay, (1 + n) / (10 + n)) after n steps.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import recon.trainer as trainer_module  # noqa: E402
import train  # noqa: E402
from recon.evaluation import cosine  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

DECAYS = (0.99, 0.995, 0.999)
SNAPSHOT_STEP = 1800  # where the default run's validation loss is lowest

kept = {}
train_step, run = trainer_module.Trainer.train_step, trainer_module.Trainer.run


def tracked_step(self, batch):
    loss = train_step(self, batch)
    params = [p.detach() for p in self.parameters if p.requires_grad]
    if not kept:
        kept.update({d: [p.clone() for p in params] for d in DECAYS}, n=0)
    kept["n"] += 1
    with torch.no_grad():
        for d in DECAYS:
            torch._foreach_lerp_(kept[d], params, 1 - min(d, (1 + kept["n"]) / (10 + kept["n"])))
    if self.step + 1 == SNAPSHOT_STEP:
        kept["step"] = [p.clone() for p in params]
    return loss


def main(argv):
    if "--eval-split" not in argv:
        argv = [*argv, "--eval-split", "validation"]
    trainer_module.Trainer.train_step = tracked_step
    try:
        code = train.main(argv)
    finally:
        trainer_module.Trainer.train_step = train_step
    if code:
        return code
    out = argv[argv.index("--output-dir") + 1] if "--output-dir" in argv else "checkpoints/default"
    split = argv[argv.index("--eval-split") + 1]
    model = ReconModel.from_pretrained(out)
    texts = model.training_corpus().texts(split)
    vectors = model.encode(texts)
    params = [p for p in model.parameters() if p.requires_grad]
    assert [p.shape for p in params] == [w.shape for w in kept[DECAYS[0]]], "the trained parameters differ from the loaded ones"
    weights = {"final weights": [p.detach().clone() for p in params]}
    if "step" in kept:
        weights[f"weights at step {SNAPSHOT_STEP}"] = kept["step"]
    weights.update({f"average, decay {d}": kept[d] for d in DECAYS})
    print(f"\n{split} split, {len(texts)} texts, greedy with the 3-gram ban:")
    for name, ws in weights.items():
        with torch.no_grad():
            for p, w in zip(params, ws):
                p.copy_(w)
        preds = model.generate_from_vectors(vectors, no_repeat_ngram=3)
        m = corpus_scores(preds, texts)
        cos = cosine(model.decoder.standardize(model.encode(preds)), model.decoder.standardize(vectors)).mean()
        print(f"{name:26s} BLEU {m['bleu']:6.2f}  token F1 {m['token_f1']:6.2f}  exact {m['exact_match']:5.2f}%  "
              f"cosine (std.) {cos:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
