"""Vector feedback and a trained corrector together: does the corrector add to the loop that moves
the base decoder's input (recon/feedback.py), or the loop to the corrector?

    python experiments/corrector_feedback.py checkpoints/exp/corrector_new validation \
        corr:2:8 moved:0.15:4:8 after:2:8 --pool=pool.json

Arguments: a corrector checkpoint (its base is loaded with it), a split, then variants, each printed
with its BLEU after every step:
    corr:STEPS:BEAM         the corrector's loop from the base's greedy pass, as recon.corrector.correct
                            runs it (every kept candidate decoded with BEAM beams, the BEAM closest kept)
    moved:RATE:STEPS:BEAM   the same, with its target slot moved as vector feedback moves the base's
                            input: v_k = v_{k-1} + RATE * (v* - E(h)), h the step's closest new candidate
    after:STEPS:BEAM        the corrector's loop from vector feedback's kept candidates (6 steps of 8 beams
                            at rate 0.15 on the base: the default loop), all of them corrected
    aftermoved:RATE:STEPS:BEAM  the same, its target slot moved at RATE as in moved
    interleave:ROUNDS:F:C:BEAM  after vector feedback, ROUNDS rounds of C corrector steps (BEAM x BEAM) and F
                            more feedback steps of 8 beams started from the corrector's kept candidates
    feedback                vector feedback on the base alone (the default loop), for the same table
--repeat-penalty=A: every decoding takes A off words already written (experiments/repeat_penalty.py).
--pool=FILE: vector feedback's kept candidates (feedback_select.py --pool writes the same file; made
here when missing). --feedback-steps=N (default 6) and --first-beams=B (default 1, greedy; 8: the default
evaluation's first pass, every beam a candidate) set the loop that makes the pool. --data=FILE (one text a line) replaces the split's texts. The 3-gram ban (loose)
throughout. Every variant reads nothing of a sentence but its vector and its own outputs' vectors.
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.feedback import encode_once, feedback_loop  # noqa: E402
from recon.metrics import corpus_scores  # noqa: E402
from recon.model import ReconModel  # noqa: E402

GEN = dict(no_repeat_ngram=3)


def corrector_loop(corr, vectors, first, steps, beam, rate=0.0, return_kept=False):
    """The corrector's loop from `first` (per sentence, a list of texts), its target slot moved at `rate`;
    return_kept: also each sentence's kept candidates, closest first."""
    base, dec, t0 = corr.base, corr.decoder, time.time()
    encode, target = encode_once(base, 256), vectors.float().cpu()
    z = dec.standardize(target).cpu()

    def closest(pools):  # each sentence's pool sorted by cosine to its target, with the cosines
        flat = [t for p in pools for t in p]
        who = torch.tensor([i for i, p in enumerate(pools) for _ in p])
        sim = F.cosine_similarity(dec.standardize(encode(flat)).cpu(), z[who], dim=-1)
        out, at = [], 0
        for p in pools:
            s = sim[at:at + len(p)]
            out.append([(float(s[j]), p[j]) for j in s.argsort(descending=True).tolist()])
            at += len(p)
        return out

    kept = [[t for _, t in row[:beam]] for row in closest([list(dict.fromkeys(p)) for p in first])]
    outputs, seconds, slot = [[row[0] for row in kept]], [time.time() - t0], target.clone()
    for _ in range(steps):
        t0 = time.time()
        flat = [t for row in kept for t in row]
        owner = torch.tensor([i for i, row in enumerate(kept) for _ in row])
        rows = dec.rows(slot[owner], encode(flat), corr.tokenizer.encode(flat))
        if beam == 1:
            new = [[x] for x in corr.decode_rows(rows, **GEN)]
        else:
            _, beams = corr.decode_rows(rows, num_beams=beam, return_all=True, **GEN)
            new = [[t for t, _ in row] for row in beams]
        fresh = [[] for _ in kept]
        for i, row in zip(owner.tolist(), new):
            fresh[i] += row
        if rate:  # the residual of the step's closest new candidate moves the target slot
            best = [row[0][1] for row in closest([list(dict.fromkeys(p)) for p in fresh])]
            slot = slot + rate * (target - encode(best))
        ranked = closest([list(dict.fromkeys(old + f)) for old, f in zip(kept, fresh)])
        kept = [[t for _, t in row[:beam]] for row in ranked]
        outputs.append([row[0] for row in kept])
        seconds.append(time.time() - t0)
    return (outputs, seconds, kept) if return_kept else (outputs, seconds)


def main():
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    ckpt, split, variants = args[0], args[1], args[2:]
    corr = ReconModel.from_pretrained(ckpt)
    base = corr.base
    if base is None:
        sys.exit(f"{ckpt} is not a corrector (train one with train.py --base-model RUN_DIR)")
    texts = open(opts["data"]).read().splitlines() if "data" in opts else base.training_corpus().texts(split)
    if "repeat-penalty" in opts:  # every decoding from here on, the corrector's steps (the pool is read as it was made)
        from repeat_penalty import install
        install(base, float(opts["repeat-penalty"]))
    vectors = base.encode(texts).float().cpu()
    target = base.decoder.standardize(vectors)

    kept_fb, fb_seconds = None, None
    if "pool" in opts and os.path.exists(opts["pool"]):
        kept_fb = json.load(open(opts["pool"]))
    if kept_fb is None and any(v == "feedback" or v.startswith("after") for v in variants):
        t0 = time.time()
        _, _, kept_fb = feedback_loop(base, vectors, int(opts.get("feedback-steps", 6)), 8, True, 0.15, no_repeat_ngram=3,
                                      num_beams=int(opts.get("first-beams", 1)), return_kept=True)
        fb_seconds = time.time() - t0
        if "pool" in opts:
            json.dump(kept_fb, open(opts["pool"], "w"))

    print(f"{ckpt} (base {corr.config.base_model}), {opts.get('data', split + ' split')} ({len(texts)} texts), 3-gram ban")
    print("| variant | BLEU by step | token F1, last | exact match %, last | cosine (std.), last | s a sentence a step |")
    print("|---|---|---:|---:|---:|---:|")
    for variant in variants:
        kind, *p = variant.split(":")
        t0 = time.time()
        if kind == "feedback":
            outputs, secs = [[row[0][1] for row in kept_fb]], [fb_seconds or 0.0]
        elif kind == "corr":
            first = base.generate_from_vectors(vectors, **GEN)
            outputs, secs = corrector_loop(corr, vectors, [[h] for h in first], int(p[0]), int(p[1]))
        elif kind == "moved":
            first = base.generate_from_vectors(vectors, **GEN)
            outputs, secs = corrector_loop(corr, vectors, [[h] for h in first], int(p[1]), int(p[2]), float(p[0]))
        elif kind == "after":
            outputs, secs = corrector_loop(corr, vectors, [[t for _, t in row] for row in kept_fb], int(p[0]), int(p[1]))
        elif kind == "interleave":
            rounds, f_steps, c_steps, beam = map(int, p)
            first, outputs, secs = [[t for _, t in row] for row in kept_fb], [], []
            for r in range(rounds):
                out, sec, kept = corrector_loop(corr, vectors, first, c_steps, beam, return_kept=True)
                outputs, secs = outputs + out[(r > 0):], secs + sec[(r > 0):]
                t1 = time.time()  # the corrector's kept candidates (its last step's pool) start more feedback
                _, sec, kept = feedback_loop(base, vectors, f_steps, 8, True, 0.15, no_repeat_ngram=3, return_kept=True,
                                             start=kept)
                first = [[t for _, t in row] for row in kept]
                outputs.append([row[0] for row in first])
                secs.append(time.time() - t1)
        elif kind == "aftermoved":
            first = [[t for _, t in row] for row in kept_fb]
            outputs, secs = corrector_loop(corr, vectors, first, int(p[1]), int(p[2]), float(p[0]))
        else:
            sys.exit(f"unknown variant {variant!r}: corr:STEPS:BEAM, moved:RATE:STEPS:BEAM, after:STEPS:BEAM, aftermoved:RATE:STEPS:BEAM or feedback")
        bleus = [corpus_scores(o, texts)["bleu"] for o in outputs]
        last = corpus_scores(outputs[-1], texts)
        cos = F.cosine_similarity(base.decoder.standardize(base.encode(outputs[-1]).float()), target, dim=-1).mean()
        per_step = sum(secs[1:]) / max(len(secs) - 1, 1) / len(texts)
        print(f"| {variant} | {' / '.join(f'{b:.2f}' for b in bleus)} | {last['token_f1']:.2f} | "
              f"{last['exact_match']:.2f} | {float(cos):.3f} | {per_step:.4f} |", flush=True)


if __name__ == "__main__":
    main()
