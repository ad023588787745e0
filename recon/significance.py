"""How sure a figure is: bootstrap intervals over the evaluated sentences, and paired tests between
two decodings of the same sentences (Koehn 2004, "Statistical significance tests for machine
translation evaluation").

Each resample draws as many sentences as were evaluated, with replacement, and recomputes every
metric on the draw: corpus BLEU from the drawn sentences' summed n-gram statistics (exactly
sacrebleu's corpus_score on those sentences), the other metrics as means over them. The 95%
interval is the 2.5th to 97.5th percentile over 1,000 resamples. A paired test draws the same
sentences for both decodings and reports their difference: its interval, and a two-sided p-value,
2 (1 + k) / (S + 1) capped at 1, where k is the number of the S resamples in which the difference
has the other sign (or is zero); with 1,000 resamples the smallest p it can give is 0.002.

What it measures: how much a figure would move on another test set of the same kind of text, with
the same trained weights. It says nothing of another training seed: run seeds for that.

    python -m recon.significance --baseline RUN/eval-test                       # its intervals
    python -m recon.significance --baseline RUN/eval-test --systems OTHER/eval-test
    python -m recon.significance --baseline "RUN/eval-test-s2b4@no feedback" --systems RUN/eval-test-s2b4

A system is an evaluation folder (its predictions.jsonl) or a predictions.jsonl file; FOLDER@CONDITION
takes a condition of the folder's correction.json (its last step) instead, such as "no feedback".
"""

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from sacrebleu.metrics import BLEU

from recon.metrics import example_scores

SAMPLES = 1000
LEVEL = 0.95
MEANS = ("token_f1", "exact_match", "sentence_bleu")  # per-example scores whose mean is the metric
LABELS = {"bleu": "BLEU", "token_f1": "token F1", "exact_match": "exact match %", "sentence_bleu": "sentence BLEU (mean)",
          "cosine_standardized": "cosine (std.)"}


def resample_weights(n, samples=SAMPLES, seed=0, chunk=100):
    """Yields (chunk, n) counts, `samples` rows in all: how often each of n sentences is drawn in
    each resample (in chunks, so that a large evaluation never holds samples x n at once)."""
    rng = np.random.default_rng(seed)
    for start in range(0, samples, chunk):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, samples - start))


class Scores:
    """One decoding of n sentences, ready to be scored on any resample of them. per_example:
    precomputed example_scores rows (evaluation has them); extra: other per-example values to
    resample as means, such as {"cosine_standardized": [...]}."""

    def __init__(self, predictions, references, per_example=None, extra=None):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        self._bleu = BLEU()  # corpus_score's settings: 13a, cased, exp smoothing
        self.stats = np.array(self._bleu._extract_corpus_statistics(predictions, [references]), dtype=np.int64)
        if per_example is None:
            per_example = [example_scores(p, r) for p, r in zip(predictions, references)]
        self.values = {k: np.array([s[k] for s in per_example], dtype=np.float64) for k in MEANS}
        self.values.update({k: np.asarray(v, dtype=np.float64) for k, v in (extra or {}).items()})
        self.n = len(references)

    def on(self, weights):
        """Each metric on each resample of `weights` (R, n): {metric: (R,) array}."""
        summed = weights @ self.stats  # (R, 2 + 2 * 4): lengths, matches, totals
        out = {"bleu": np.array([self._bleu._compute_score_from_stats(row.tolist()).score for row in summed])}
        out.update({k: weights @ v / self.n for k, v in self.values.items()})
        return out

    def whole(self):
        """Each metric on all the sentences once: {metric: float}."""
        return {k: float(v[0]) for k, v in self.on(np.ones((1, self.n), dtype=np.int64)).items()}


def draws(scores, samples=SAMPLES, seed=0):
    """The same resamples scored for each decoding in `scores`: one {metric: (samples,)} each."""
    parts = [[] for _ in scores]
    for w in resample_weights(scores[0].n, samples, seed):
        for part, s in zip(parts, scores):
            part.append(s.on(w))
    return [{k: np.concatenate([p[k] for p in part]) for k in part[0]} for part in parts]


def _bounds(samples, level=LEVEL):
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def intervals(scores, samples=SAMPLES, seed=0):
    """{metric: [low, high]}, the 95% bootstrap interval of each metric of one decoding."""
    return {k: list(_bounds(v)) for k, v in draws([scores], samples, seed)[0].items()}


def paired(a, b, samples=SAMPLES, seed=0, metrics=None):
    """a against b, two decodings of the same sentences: {metric: {"a", "b", "difference", "low",
    "high", "p"}}, the difference a - b on all sentences, its 95% interval and two-sided p-value."""
    if a.n != b.n:
        raise ValueError(f"a paired test needs the same sentences: {a.n} against {b.n}")
    whole_a, whole_b = a.whole(), b.whole()
    draw_a, draw_b = draws([a, b], samples, seed)
    out = {}
    for k in metrics or [k for k in whole_a if k in whole_b]:
        d = draw_a[k] - draw_b[k]
        diff = whole_a[k] - whole_b[k]
        flips = int((d <= 0).sum()) if diff > 0 else int((d >= 0).sum()) if diff < 0 else len(d)
        lo, hi = _bounds(d)
        out[k] = {"a": whole_a[k], "b": whole_b[k], "difference": diff, "low": lo, "high": hi,
                  "p": min(1.0, 2 * (1 + flips) / (len(d) + 1))}
    return out


def figure(metric, value, sign=""):
    """A metric's value as the reports print it: cosines to 3 decimals, the rest to 2."""
    return f"{value:{sign}.3f}" if metric == "cosine_standardized" else f"{value:{sign}.2f}"


def format_p(p, samples=SAMPLES):
    """A p-value as the tables print it: '<= 0.002' where no resample of `samples` went the other way."""
    return f"<= {p:.3f}" if p <= 2 / (samples + 1) + 1e-12 else f"{p:.3f}"


def _relation(p):  # "<= 0.002" stays, "0.123" reads "= 0.123"
    return p if p.startswith("<") else f"= {p}"


def paired_line(name, test, metrics=("bleu", "token_f1")):
    """One sentence for a report: a's difference from `name` on each metric, interval and p."""
    parts = [f"{figure(k, test[k]['difference'], '+')} {LABELS[k]} (95% interval {figure(k, test[k]['low'], '+')} to "
             f"{figure(k, test[k]['high'], '+')}, "
             f"p {_relation(format_p(test[k]['p']))})" for k in metrics if k in test]
    return f"{name}: " + ", ".join(parts)


def paired_table(baseline_name, results, metrics=("bleu", "token_f1", "exact_match", "cosine_standardized"), samples=SAMPLES):
    """Markdown: one row per system and metric, its difference from the baseline."""
    lines = [f"| system | metric | system | baseline ({baseline_name}) | difference | 95% interval | p |",
             "|---|---|---:|---:|---:|---|---:|"]
    for name, test in results.items():
        for k in metrics:
            if k in test:
                t = test[k]
                lines.append(f"| {name} | {LABELS[k]} | {figure(k, t['a'])} | {figure(k, t['b'])} | {figure(k, t['difference'], '+')} | "
                             f"{figure(k, t['low'], '+')} to {figure(k, t['high'], '+')} | {format_p(t['p'], samples)} |")
    return "\n".join(lines)


def load_system(spec):
    """(references, predictions, extra) of an evaluation folder or predictions.jsonl, or of
    FOLDER@CONDITION: a condition of the folder's correction.json (its last step)."""
    from recon.errors import ReconError
    path, _, condition = spec.partition("@")
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, "predictions.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ReconError(f"{spec}: no predictions.jsonl there; give an evaluation folder that evaluate.py or "
                         "train.py wrote, or its predictions.jsonl")
    with open(file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    references = [r["reference"] for r in rows]
    if not condition:
        extra = {"cosine_standardized": [r["cosine_standardized"] for r in rows]} if rows and "cosine_standardized" in rows[0] else {}
        return references, [r["prediction"] for r in rows], extra
    correction = os.path.join(folder, "correction.json")
    if not os.path.isfile(correction):
        raise ReconError(f"{spec}: no correction.json in {folder}; @CONDITION needs a corrector's evaluation "
                         "(evaluate.py --correction-steps N)")
    with open(correction) as f:
        conditions = json.load(f)["conditions"]
    if condition not in conditions:
        raise ReconError(f"{spec}: correction.json has no condition {condition!r}; it has {', '.join(conditions)}")
    predictions = conditions[condition]["predictions"]
    if len(predictions) != len(references):
        raise ReconError(f"{spec}: {len(predictions)} predictions for the {len(references)} references of {file}")
    return references, predictions, {}


def aligned(references, predictions, extra, order, spec):
    """Reorder a system's rows to the references `order` (one evaluation may list them otherwise)."""
    from recon.errors import ReconError
    if references == order:
        return predictions, extra
    index = {r: i for i, r in enumerate(references)}
    if len(index) != len(references) or sorted(references) != sorted(order):
        raise ReconError(f"{spec} holds other sentences than the baseline ({len(references)} against {len(order)}); "
                         "a paired test needs two decodings of the same sentences")
    take = [index[r] for r in order]
    return [predictions[i] for i in take], {k: [v[i] for i in take] for k, v in extra.items()}


def compare(baseline, systems, samples=SAMPLES, seed=0):
    """Each system against the baseline, as paired tests: {system spec: paired()}; and the
    baseline's own intervals. Rows are matched by reference text."""
    references, predictions, extra = load_system(baseline)
    base = Scores(predictions, references, extra=extra)
    results = {}
    for spec in systems:
        preds, ex = aligned(*load_system(spec), references, spec)
        results[spec] = paired(Scores(preds, references, extra=ex), base, samples, seed)  # the metrics both have
    return results, intervals(base, samples, seed)


@dataclass
class SignificanceConfig:
    """python -m recon.significance: paired bootstrap tests of evaluations of the same sentences."""

    baseline: str = field(default="", metadata={
        "help": "an evaluation folder, its predictions.jsonl, or FOLDER@CONDITION of a correction.json"})
    systems: str = field(default="", metadata={
        "help": "comma-separated evaluations to compare with the baseline (none: the baseline's intervals alone)"})
    samples: int = field(default=SAMPLES, metadata={"help": "bootstrap resamples"})
    seed: int = field(default=0, metadata={"help": "seed of the resampling"})
    output: str = field(default="", metadata={"help": "also write the results as JSON to this file"})

    def __post_init__(self):
        from recon.errors import check
        check(self.baseline, "--baseline is required: the evaluation to compare against")
        check(self.samples >= 100, f"--samples must be at least 100, not {self.samples}")


def main(argv=None):
    from recon.config import parse
    from recon.errors import ReconError, print_error
    try:
        cfg = parse(SignificanceConfig, argv)
        systems = [s for s in cfg.systems.split(",") if s]
        results, base_intervals = compare(cfg.baseline, systems, cfg.samples, cfg.seed)
    except ReconError as e:
        print_error(e)
        return 2
    print(f"baseline {cfg.baseline}: 95% intervals over {cfg.samples} resamples of its sentences: " + ", ".join(
        f"{LABELS[k]} {figure(k, lo)} to {figure(k, hi)}" for k, (lo, hi) in base_intervals.items() if k in LABELS))
    if results:
        print(paired_table(cfg.baseline, results, samples=cfg.samples))
    if cfg.output:
        with open(cfg.output, "w") as f:
            json.dump({"baseline": cfg.baseline, "baseline_intervals": base_intervals, "samples": cfg.samples,
                       "seed": cfg.seed, "systems": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
