"""Three decoding-time knobs tried on a checkpoint, each read off one split (greedy with the 3-gram
ban unless said):

    python experiments/decode_knobs.py checkpoints/default validation prior 1,1.5,2,3
        the bag-of-words prior's term scaled by each factor (1: as trained)
    python experiments/decode_knobs.py checkpoints/default validation eos 0,1,2,3
        this much taken off the [EOS] logit at every step (longer outputs?); prints BLEU's brevity penalty
    python experiments/decode_knobs.py checkpoints/default validation sample 16 0.7
        the greedy output and 16 samples at temperature 0.7, the one closest to the target vector
        kept (of the greedy and the first 4, 8, 16), and the oracle: the candidate nearest its reference

Prints corpus BLEU, token F1 and the standardised cosine of the re-encoded output per setting.
"""
import os
import sys

import torch
from sacrebleu.metrics import BLEU

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.evaluation import cosine  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

ckpt, split, knob = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
model = ReconModel.from_pretrained(ckpt)
texts = model.training_corpus().texts(split)
vectors = model.encode(texts)
dec = model.decoder
target = dec.standardize(vectors)
token_logits = type(dec).token_logits


def line(name, preds):
    m, b = corpus_scores(preds, texts), BLEU().corpus_score(preds, [texts])
    c = cosine(dec.standardize(model.encode(preds)), target).mean()
    print(f"{name:34s} BLEU {m['bleu']:6.2f} (brevity {b.bp:.3f})  token F1 {m['token_f1']:6.2f}  cosine (std.) {c:.3f}",
          flush=True)


if knob in ("prior", "eos"):
    for x in (float(a) for a in sys.argv[4].split(",")):
        def patched(self, h, rows, input_ids, cache, x=x):
            if knob == "eos":
                logits = token_logits(self, h, rows, input_ids, cache)
                logits[..., model.config.eos_id] -= x
                return logits
            logits = torch.nn.functional.linear(h, self.tok_emb.weight)
            logits = logits + x * self.prior_gate(h) * rows["prior"][:, None].to(logits.dtype)
            return self.penalise_written(logits, input_ids, cache) if self.coverage is not None else logits
        type(dec).token_logits = patched
        try:
            line(f"{knob} {x:g}", model.generate_from_vectors(vectors, no_repeat_ngram=3))
        finally:
            type(dec).token_logits = token_logits
elif knob == "sample":
    n, temperature = int(sys.argv[4]), float(sys.argv[5])
    greedy = model.generate_from_vectors(vectors, no_repeat_ngram=3)
    samples = model.generate_from_vectors(vectors.repeat_interleave(n, 0), no_repeat_ngram=3, temperature=temperature)
    cands = [[greedy[i]] + samples[i * n:(i + 1) * n] for i in range(len(texts))]
    flat = [c for row in cands for c in row]
    cos = cosine(dec.standardize(model.encode(flat)), target.repeat_interleave(n + 1, 0)).view(len(texts), n + 1)
    line("greedy", greedy)
    for k in (4, 8, 16, 32, 64):
        if k <= n:
            line(f"greedy + {k} samples, closest kept", [row[j] for row, j in zip(cands, cos[:, :k + 1].argmax(1).tolist())])
    sb = BLEU(effective_order=True)
    line("oracle (reads the reference)", [max(row, key=lambda c: sb.sentence_score(c, [r]).score) for row, r in zip(cands, texts)])
else:
    sys.exit(f"unknown knob {knob!r}: prior, eos or sample")
