"""Evaluate a model on texts: reconstruct from their vectors, score, and score the controls.

Writes to an output folder:
  metrics.json       headline metrics, by-length metrics, controls, decoding settings
  predictions.jsonl  one line per example: reference, prediction, length, scores, control
  report.md          the human report (recon/report.py)
"""

import json
import os
import time

import torch

from recon.metrics import corpus_scores, example_scores
from recon.report import write_report

LENGTH_BUCKETS = ((1, 8), (9, 16), (17, 24), (25, 32), (33, 48), (49, 64), (65, 10**9))


def bucket_name(length):
    for lo, hi in LENGTH_BUCKETS:
        if lo <= length <= hi:
            return f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"
    return "0"


def matched_random_vectors(vectors, seed=0):
    """Gaussian vectors with the same mean and covariance as `vectors` (N, D)."""
    x = vectors.double().cpu()
    mean = x.mean(0)
    cov = torch.cov(x.T)  # (D, D)
    evals, evecs = torch.linalg.eigh(cov)
    scale = evecs * evals.clamp(min=0).sqrt()  # cov = scale @ scale.T
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape[0], x.shape[1], generator=g, dtype=torch.float64)
    return (mean + z @ scale.T).to(vectors.dtype)


def evaluate(model, texts, lengths, num_beams=1, length_penalty=1.0, batch_size=256, seed=0, log=print):
    """Score `model` on `texts`; lengths: encoder-token length of each text.

    Returns (metrics, rows): the metrics dict and one dict per example.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("nothing to evaluate: the chosen split holds no text")
    decode = dict(num_beams=num_beams, length_penalty=length_penalty, batch_size=batch_size)
    t0 = time.time()
    vectors = model.encode(texts)  # (N, D)
    t_encode = time.time() - t0
    predictions = model.generate_from_vectors(vectors, **decode)
    t_decode = time.time() - t0 - t_encode
    control = model.generate_from_vectors(matched_random_vectors(vectors, seed), **decode)
    log(f"evaluated {len(texts)} texts: encode {t_encode:.1f}s, decode {t_decode:.1f}s")

    rows = []
    for text, pred, ctrl, n in zip(texts, predictions, control, lengths):
        rows.append({
            "reference": text, "prediction": pred, "length": n, "length_bucket": bucket_name(n),
            **example_scores(pred, text), "control_random_prediction": ctrl,
            **{f"control_random_{k}": v for k, v in example_scores(ctrl, text).items()},
        })
    metrics = {
        **corpus_scores(predictions, texts, [_scores(r) for r in rows]),
        **{f"control_random_{k}": v for k, v in
           corpus_scores(control, texts, [_scores(r, "control_random_") for r in rows]).items()
           if k not in ("num_examples", "sacrebleu_signature")},
        "decoding": {"strategy": "beam" if num_beams > 1 else "greedy", "num_beams": num_beams,
                     "length_penalty": length_penalty, "max_new_tokens": model.config.max_target_len + 1},
        "control_random": "Gaussian vectors with the mean and covariance of the evaluated vectors",
        "encode_seconds": t_encode,
        "decode_seconds": t_decode,
        "sentences_per_second": len(texts) / max(t_decode, 1e-9),
        "by_length": by_length(rows),
    }
    return metrics, rows


def _scores(row, prefix=""):
    keys = ("sentence_bleu", "exact_match", "exact_match_normalized", "token_f1")
    return {k: row[prefix + k] for k in keys}


def by_length(rows):
    out = {}
    for lo, hi in LENGTH_BUCKETS:
        name = bucket_name(lo)
        sel = [r for r in rows if r["length_bucket"] == name]
        if not sel:
            continue
        m = corpus_scores([r["prediction"] for r in sel], [r["reference"] for r in sel], [_scores(r) for r in sel])
        c = corpus_scores([r["control_random_prediction"] for r in sel], [r["reference"] for r in sel],
                          [_scores(r, "control_random_") for r in sel])
        m.pop("sacrebleu_signature")
        out[name] = {**m, "control_random_bleu": c["bleu"], "control_random_exact_match": c["exact_match"]}
    return out


def write_outputs(output_dir, metrics, rows, title="recon evaluation"):
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(output_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return write_report(os.path.join(output_dir, "report.md"), metrics, rows, title)
