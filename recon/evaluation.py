"""Evaluate a model on texts: reconstruct from their vectors, score, and score the controls.

Controls, always computed beside the reconstruction:
  random     decode Gaussian vectors with the mean and covariance of the real ones
             (what the decoder writes from its language prior alone);
  shuffled   decode each sentence from another evaluated sentence's vector (never its own);
  retrieval  the training sentence whose vector is closest by cosine (what memorising the
             training set would score); and the overlap of the evaluated text with training.

Writes to an output folder:
  metrics.json       headline metrics, controls, by-length metrics, decoding settings
  predictions.jsonl  one line per example: reference, prediction, length, scores, controls
  report.md          the human report (recon/report.py), and PNG plots beside it
"""

import json
import os
import time

import torch
import torch.nn.functional as F

from recon.data import DataError
from recon.distributed import is_main, sharded
from recon.metrics import corpus_scores, example_scores, ngram_overlap, repeats_ngram, repeats_word
from recon.report import write_report
from recon.significance import SAMPLES, Scores, intervals, paired

LENGTH_BUCKETS = ((1, 8), (9, 16), (17, 24), (25, 32), (33, 48), (49, 64), (65, 10**9))
CONTROLS = ("random", "shuffled", "retrieval")
SCORES = ("sentence_bleu", "exact_match", "exact_match_normalized", "token_f1", "repeated_3gram", "repeated_word",
          "broken_text")


def bucket_name(length):
    for lo, hi in LENGTH_BUCKETS:
        if lo <= length <= hi:
            return f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"
    return "0"


def matched_random_vectors(vectors, seed=0):
    """Gaussian vectors with the same mean and covariance as `vectors` (N, D)."""
    x = vectors.double().cpu()
    mean = x.mean(0)
    cov = torch.cov(x.T) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)  # (D, D)
    evals, evecs = torch.linalg.eigh(cov)
    scale = evecs * evals.clamp(min=0).sqrt()  # cov = scale @ scale.T
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape[0], x.shape[1], generator=g, dtype=torch.float64)
    return (mean + z @ scale.T).to(vectors.dtype)


def derangement(n, seed=0):
    """A permutation with no fixed point: index i gets another row's vector (n >= 2)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)  # each row takes the next row's vector in a random cycle
    return perm


def nearest(queries, pool, chunk=4096):
    """Index into `pool` (M, D) of the closest row by cosine for each query (N, D)."""
    p = F.normalize(pool.float(), dim=-1)
    out = []
    for s in range(0, len(queries), chunk):
        q = F.normalize(queries[s:s + chunk].float().to(p.device), dim=-1)
        out.append((q @ p.T).argmax(-1).cpu())  # (n,)
    return torch.cat(out)


def cosine(a, b):
    return F.cosine_similarity(a.float(), b.float().to(a.device), dim=-1).cpu()


def decode(model, vectors, rerank="none", **gen):
    """Predictions for `vectors` (gen: generate_from_vectors' settings); with rerank="embedding"
    each example keeps the beam whose re-encoded vector is closest to its own. Returns
    (predictions, plain-beam predictions or None). Under torchrun each process decodes its shard
    and all get every prediction back."""
    def shard(v):
        preds, plain = _decode(model, v, rerank, gen)
        return list(zip(preds, plain or [None] * len(preds)))
    pairs = sharded(shard, vectors)
    return [p for p, _ in pairs], ([b for _, b in pairs] if rerank == "embedding" else None)


def _decode(model, vectors, rerank, gen):
    if rerank != "embedding":
        return model.generate_from_vectors(vectors, **gen), None
    return model.rerank_beams(vectors, **gen)


def retrieval_control(model, texts, vectors, pool_texts, pool_vectors, encode):
    """The nearest pool text of each evaluated vector (standardised cosine), and how much the
    evaluated texts overlap the pool: (retrieved texts, overlap metrics)."""
    if pool_vectors is None:
        pool_vectors = encode(pool_texts)
    idx = nearest(model.decoder.standardize(vectors), model.decoder.standardize(pool_vectors)).tolist()
    retrieved = [pool_texts[i] for i in idx]
    pool_set = set(pool_texts)
    return retrieved, {"overlap_texts_in_train": sum(t in pool_set for t in texts),
                       "overlap_ngram_nearest_train": 100 * sum(ngram_overlap(t, p) for t, p in
                                                                zip(texts, retrieved)) / len(texts),
                       "retrieval_pool_size": len(pool_texts)}


def decoded_controls(vectors, predictions, generate, seed, random=None):
    """The random and shuffled controls' outputs; generate(vectors) decodes as `predictions` were
    decoded. random: the random control's outputs if already decoded. The shuffled control is
    `predictions` permuted, not decoded again: decoding (a rerank and a correction loop included)
    reads the vector alone, so another sentence's vector decodes to that sentence's reconstruction."""
    controls = {"random": list(random) if random is not None else generate(matched_random_vectors(vectors, seed))}
    if len(predictions) > 1:
        order = derangement(len(predictions), seed)
        controls["shuffled"] = [predictions[i] for i in order.tolist()]
    return controls


def example_rows(texts, predictions, lengths, fidelity, fidelity_std, controls):
    """One dict per example: reference, prediction, length, its scores and each control's."""
    rows = []
    for i, (text, pred, n) in enumerate(zip(texts, predictions, lengths)):
        row = {"reference": text, "prediction": pred, "length": n, "length_bucket": bucket_name(n),
               **example_scores(pred, text), "cosine": float(fidelity[i]),
               "cosine_standardized": float(fidelity_std[i])}
        for name, outs in controls.items():
            row[f"control_{name}_prediction"] = outs[i]
            row.update({f"control_{name}_{k}": v for k, v in example_scores(outs[i], text).items()})
        rows.append(row)
    return rows


def loop_settings(model, correction_steps, correction_beam, feedback_rate, feedback_steps=0, feedback_beam=None,
                  correction_rate=0.0):
    """generate_from_vectors' correction settings, resolved ({} for a single pass): a corrector, or a plain
    decoder given correction steps (vector feedback, recon/feedback.py). Every output, the controls' too,
    goes through the same loop, and metrics.json records these."""
    if model.base is None and not correction_steps:
        return {}
    loop = {"correction_steps": model.correction_steps if correction_steps is None else correction_steps,
            "correction_beam": correction_beam}
    if model.base is None or feedback_steps:
        from recon.feedback import DEFAULT_RATE
        loop["feedback_rate"] = DEFAULT_RATE if feedback_rate is None else feedback_rate
    if model.base is not None and feedback_steps:  # vector feedback on the corrector's base first
        loop["feedback_steps"], loop["feedback_beam"] = feedback_steps, feedback_beam or correction_beam
    if model.base is not None and correction_rate:  # the corrector's target slot moved each step
        loop["correction_rate"] = correction_rate
    return loop


def step_log(loop, log, what):
    """generate_from_vectors' log for a correction loop (none without one): each step's time as it ends, named
    by `what` ("the reconstruction, feedback step 1 of 3: ..."); minutes pass between the evaluation's lines otherwise."""
    return {"log": lambda line: log(f"{what}, {line}")} if loop and is_main() else {}


def evaluate(model, texts, lengths, num_beams=1, length_penalty=1.0, batch_size=256, seed=0, rerank="none",
             pool_texts=None, pool_vectors=None, no_repeat_ngram=0, correction_steps=None, correction_beam=1, log=print,
             no_repeat_match="loose", given=None, feedback_rate=None, feedback_steps=0, feedback_beam=None,
             correction_rate=0.0):
    """Score `model` on `texts`; lengths: encoder-token length of each text.

    pool_texts: the training texts for the retrieval control and the overlap check (none: skipped);
    pool_vectors: their vectors, if already computed. given: outputs already decoded with these very
    settings, not decoded again: {"predictions": [...], "decode_seconds": s, "random": [...]} (a
    corrector's evaluation has them from its step-by-step run; "random" from the same draw of
    matched_random_vectors(vectors, seed)).
    Returns (metrics, rows): the metrics dict and one dict per example.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("nothing to evaluate: the chosen split holds no text")
    if rerank not in ("none", "embedding"):
        raise ValueError(f"unknown rerank {rerank!r}; choose none or embedding")
    gen = dict(num_beams=num_beams, length_penalty=length_penalty, batch_size=batch_size, no_repeat_ngram=no_repeat_ngram,
               no_repeat_match=no_repeat_match)
    loop = loop_settings(model, correction_steps, correction_beam, feedback_rate, feedback_steps, feedback_beam,
                         correction_rate)
    gen.update(loop)
    t0 = time.time()
    # under torchrun each process encodes and decodes its shard, and all get the whole result back
    def encode(xs):
        return sharded(model.encode, xs)

    def generate(v):  # the controls decode as the reconstruction does, rerank included
        return decode(model, v, rerank=rerank, **gen, **step_log(loop, log, "the random-vector control"))[0]

    vectors = encode(texts)  # (N, D)
    t_encode = time.time() - t0
    given = given or {}
    if "predictions" in given:
        predictions, plain_beam, t_decode = list(given["predictions"]), None, given["decode_seconds"]
    else:
        predictions, plain_beam = decode(model, vectors, rerank=rerank, **gen, **step_log(loop, log, "the reconstruction"))
        t_decode = time.time() - t0 - t_encode
    re_encoded = encode(predictions)
    fidelity = cosine(re_encoded, vectors)  # (N,) re-encoded reconstruction vs target
    fidelity_std = cosine(model.decoder.standardize(re_encoded), model.decoder.standardize(vectors))
    controls = decoded_controls(vectors, predictions, generate, seed, random=given.get("random"))
    overlap = {}
    if pool_texts:
        controls["retrieval"], overlap = retrieval_control(model, texts, vectors, pool_texts, pool_vectors, encode)
    log(f"evaluated {len(texts)} texts: encode {t_encode:.1f}s, decode {t_decode:.1f}s")
    rows = example_rows(texts, predictions, lengths, fidelity, fidelity_std, controls)
    metrics = {**corpus_scores(predictions, texts, [_scores(r) for r in rows]), "cosine": _mean(fidelity.tolist()),
               "cosine_standardized": _mean(fidelity_std.tolist())}
    for name, outs in controls.items():
        c = corpus_scores(outs, texts, [_scores(r, f"control_{name}_") for r in rows])
        metrics.update({f"control_{name}_{k}": v for k, v in c.items() if k not in ("num_examples", "sacrebleu_signature")})
    metrics.update(uncertainty(texts, predictions, fidelity_std.tolist(), controls, rows, seed))
    if plain_beam is not None:
        b = corpus_scores(plain_beam, texts)
        metrics.update({f"beam_without_rerank_{k}": b[k] for k in ("bleu", "exact_match", "token_f1")})
        plain_vecs = model.decoder.standardize(encode(plain_beam))
        metrics["beam_without_rerank_cosine_standardized"] = _mean(cosine(plain_vecs, model.decoder.standardize(vectors)).tolist())
    metrics.update({
        **overlap,
        "reference_repeated_3gram": 100 * sum(map(repeats_ngram, texts)) / len(texts),
        "reference_repeated_word": 100 * sum(map(repeats_word, texts)) / len(texts),
        **unreachable_under_ban(model, texts, no_repeat_ngram, no_repeat_match),
        "decoding": {"strategy": "beam" if num_beams > 1 else "greedy", "num_beams": num_beams,
                     "length_penalty": length_penalty, "rerank": rerank, "no_repeat_ngram": no_repeat_ngram,
                     "no_repeat_match": no_repeat_match,
                     "max_new_tokens": model.config.max_target_len + 1,
                     **loop, **({"companions": [c.folder for c in model.companions]} if model.companions and loop else {})},
        "controls": {"random": "Gaussian vectors with the mean and covariance of the evaluated vectors",
                     "shuffled": "each text decoded from another evaluated text's vector",
                     "retrieval": "the training text with the closest vector by cosine (standardised)"},
        "encoder_precision": model.encoder.resolved_precision(),
        "generation_precision": model.resolved_generation_precision(),
        "encode_seconds": t_encode,
        "decode_seconds": t_decode,
        "sentences_per_second": len(texts) / max(t_decode, 1e-9),
        "by_length": by_length(rows, list(controls)),
    })
    return metrics, rows


def uncertainty(texts, predictions, cosines, controls, rows, seed=0):
    """95% bootstrap intervals of the reconstruction's metrics over the evaluated texts, and a
    paired test of the reconstruction against each control (recon/significance.py)."""
    scores = Scores(predictions, texts, [_scores(r) for r in rows], extra={"cosine_standardized": cosines})
    versus = {name: paired(scores, Scores(outs, texts, [_scores(r, f"control_{name}_") for r in rows]), seed=seed,
                           metrics=("bleu", "token_f1"))
              for name, outs in controls.items()}
    return {"intervals": intervals(scores, seed=seed), "versus_controls": versus,
            "bootstrap": {"samples": SAMPLES, "level": 0.95, "seed": seed}}


def unreachable_under_ban(model, texts, n, match="exact"):
    """With --no-repeat-ngram n: the share of references that repeat an n-gram of decoder tokens
    (compared as --no-repeat-match says), which the ban makes impossible to write exactly (the
    ceiling it puts on exact match)."""
    if not n:
        return {}
    classes = model.piece_classes(match)
    classes = classes.tolist() if classes is not None else None

    def repeats(ids):
        if classes is not None:  # loose: the pieces' classes, punctuation (-1) left out
            ids = [c for c in (classes[i] for i in ids) if c >= 0]
        grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        return len(grams) != len(set(grams))
    return {"reference_unreachable_no_repeat": 100 * sum(map(repeats, model.tokenizer.encode(texts))) / len(texts)}


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def _scores(row, prefix=""):
    return {k: row[prefix + k] for k in SCORES}


def by_length(rows, controls):
    out = {}
    for lo, hi in LENGTH_BUCKETS:
        name = bucket_name(lo)
        sel = [r for r in rows if r["length_bucket"] == name]
        if not sel:
            continue
        refs = [r["reference"] for r in sel]
        m = corpus_scores([r["prediction"] for r in sel], refs, [_scores(r) for r in sel])
        m.pop("sacrebleu_signature")
        m["cosine"] = _mean([r["cosine"] for r in sel])
        m["cosine_standardized"] = _mean([r["cosine_standardized"] for r in sel])
        for c in controls:
            s = corpus_scores([r[f"control_{c}_prediction"] for r in sel], refs, [_scores(r, f"control_{c}_") for r in sel])
            m.update({f"control_{c}_bleu": s["bleu"], f"control_{c}_exact_match": s["exact_match"]})
        out[name] = m
    return out


def write_outputs(output_dir, metrics, rows, title="recon evaluation"):
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(output_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return write_report(output_dir, metrics, rows, title)


def evaluate_split(model, corpus, split, output_dir, *, info, max_examples=None, log=print, **settings):
    """Evaluate `model` on a split of `corpus` (the end of train.py, and evaluate.py): score it
    beside the controls, write metrics.json, predictions.jsonl and report.md to output_dir (rank 0),
    print the headline table. info: what is evaluated (checkpoint, step, data), kept in the metrics.
    settings: evaluate()'s (num_beams, rerank, pool_texts, ...). Returns the metrics; the caller
    prints them (report.headline_table)."""
    texts = corpus.texts(split)[:max_examples]
    if not texts:
        raise DataError(f"the {split} split of {info.get('data')} is empty; choose another --split")
    metrics, rows = evaluate(model, texts, [corpus.lengths[t] for t in texts], log=log, **settings)
    metrics.update(split=split, **info)
    if is_main():
        write_outputs(output_dir, metrics, rows, title=f"recon: {info['checkpoint']} on {info.get('data')} ({split})")
    return metrics
