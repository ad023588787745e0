"""A decoding-time penalty on content words already written, read off one split:

    python experiments/repeat_penalty.py checkpoints/default validation 0,0.5,1,2,4 [--data=FILE] [--common=100]
        [--modes=rerank] [--save=DIR]   (rerank alone; each setting's outputs written to DIR, one a line)

The default's outputs repeat a content word (a word outside the split's --common commonest) in far more
sentences than the references do. For each penalty a, every word-start piece of three letters or more
outside the training split's --common commonest word-start pieces has a taken off its log-probability
once a piece of its class (recon.decoding.canonical_pieces: case and accents ignored) was written:
greedy, then 8 beams with the embedding rerank (train.py's decoding). Prints corpus BLEU, token F1,
the standardised cosine of the re-encoded outputs, and the share of outputs with a repeated content
word (the references' share first).
"""
import collections
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import recon.decoding as decoding  # noqa: E402
from recon.evaluation import cosine  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402


def install(model, penalty, common_n=100, train=None):
    """From now on every decoding (greedy and beam search, through recon.decoding.ban_repeats_, so only with
    the n-gram ban on) takes `penalty` from the log-probability of each word-start piece of 3+ letters outside
    the training split's common_n commonest word starts once a piece of its class was written (train: the
    training split's texts, if the caller has them). Returns a function that sets the penalty."""
    sp, V = model.tokenizer.sp, model.tokenizer.vocab_size
    canon = model.piece_classes("loose")
    train = model.training_corpus().texts("train") if train is None else train
    counts = collections.Counter(i for ids in model.tokenizer.encode(train) for i in ids)
    starts = [sp.id_to_piece(i).startswith("\u2581") for i in range(V)]
    common = {i for i, _ in sorted(((i, c) for i, c in counts.items() if starts[i]), key=lambda x: -x[1])[:common_n]}
    penal = torch.tensor([starts[i] and i not in common and len(sp.id_to_piece(i)) >= 4
                          and sp.id_to_piece(i)[1:].isalpha() for i in range(V)], device=canon.device)
    print(f"{int(penal.sum())} of {V} pieces penalised once written ({common_n} commonest word starts spared)",
          flush=True)
    ban, state = decoding.ban_repeats_, {"a": penalty}

    def ban_and_penalise_(logits, history, n, canon=None):
        ban(logits, history, n, canon)
        if state["a"] and history.shape[1]:
            c = canon if canon is not None else torch.arange(V, device=history.device)
            written = torch.zeros(history.shape[0], V, dtype=torch.bool, device=history.device)
            rows, cols = penal[history].nonzero(as_tuple=True)
            written[rows, c[history[rows, cols]].clamp(min=0)] = True
            logits.sub_(state["a"] * (written[:, c.clamp(min=0)] & penal).to(logits.dtype))

    decoding.ban_repeats_ = ban_and_penalise_
    return lambda a: state.update(a=a)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    ckpt, split, penalties = args[0], args[1], [float(a) for a in args[2].split(",")]
    common_n = int(opts.get("common", 100))
    torch.manual_seed(0)
    model = ReconModel.from_pretrained(ckpt)
    corpus = model.training_corpus()
    texts = open(opts["data"]).read().splitlines() if "data" in opts else corpus.texts(split)
    vectors = model.encode(texts)
    target = model.decoder.standardize(vectors)
    train = corpus.texts("train")
    set_penalty = install(model, 0.0, common_n, train)
    words = re.compile(r"\w+")
    freq = collections.Counter(w for t in train for w in words.findall(t.lower()))
    top = {w for w, _ in freq.most_common(common_n)}

    def repeats(preds):
        def one(s):
            c = collections.Counter(w for w in words.findall(s.lower()) if w not in top)
            return any(v > 1 for v in c.values())
        return 100 * sum(map(one, preds)) / len(preds)

    print(f"references: {repeats(texts):.1f}% with a repeated content word", flush=True)
    for a in penalties:
        set_penalty(a)
        for name, gen in (("greedy", dict()), ("8 beams + rerank", dict(num_beams=8, rerank="embedding"))):
            if name == "greedy" and opts.get("modes") == "rerank":
                continue
            preds = model.generate_from_vectors(vectors, no_repeat_ngram=3, **gen)
            if "save" in opts:
                os.makedirs(opts["save"], exist_ok=True)
                with open(os.path.join(opts["save"], f"{name.split()[0]}_{a:g}.txt"), "w") as f:
                    f.write("\n".join(preds) + "\n")
            m = corpus_scores(preds, texts)
            c = cosine(model.decoder.standardize(model.encode(preds)), target).mean()
            print(f"penalty {a:<4g} {name:17s} BLEU {m['bleu']:6.2f}  token F1 {m['token_f1']:6.2f}  cosine (std.) "
                  f"{c:.3f}  repeated content word {repeats(preds):5.1f}%", flush=True)


if __name__ == "__main__":
    main()
