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
the same trained weights. Of one run it says nothing of another training seed. Give a setting as
several runs, one per seed (RUN_S0+RUN_S1+RUN_S2), and each resample also draws that many of its
runs with replacement: its figure is the mean over the drawn runs, so the interval and the p-value
take in the seeds' spread as well as the sentences' (a two-level bootstrap; with three seeds a
coarse one). `--paired-seeds true` draws the same runs of both sides, for settings whose i-th runs
share their weights (a corrector and its own no-feedback loop); independently trained settings
draw theirs apart.

    python -m recon.significance --baseline RUN/eval-test                       # its intervals
    python -m recon.significance --baseline RUN/eval-test --systems OTHER/eval-test
    python -m recon.significance --baseline "RUN/eval-test-s2b4@no feedback" --systems RUN/eval-test-s2b4
    python -m recon.significance --baseline "A_S0/ev@no feedback+A_S1/ev@no feedback" --systems A_S0/ev+A_S1/ev \
        --paired-seeds true                                                    # pooled over two seeds

A system is an evaluation folder (its predictions.jsonl or .jsonl.gz) or such a file; FOLDER@CONDITION
takes a condition of the folder's correction.json (its last step) instead, such as "no feedback";
runs joined by "+" are one setting's seeds, decodings of the same sentences.
"""

import gzip
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


def _runs(x):
    """A setting's runs: a Scores is a setting of one run; a list of Scores, one run per seed."""
    runs = list(x) if isinstance(x, (list, tuple)) else [x]
    if not runs or any(r.n != runs[0].n for r in runs):
        raise ValueError(f"a setting's runs must decode the same sentences: {[r.n for r in runs]} of them")
    return runs


def _seed_counts(rng, rows, k):
    return rng.multinomial(k, np.full(k, 1.0 / k), size=rows)  # (rows, k): how often each run is drawn


def draws(settings, samples=SAMPLES, seed=0, paired_seeds=False):
    """The same resamples of the sentences scored for each setting (a Scores, or a list of Scores,
    one per training seed): one {metric: (samples,)} each. A setting of several runs also draws as
    many of its runs with replacement in each resample and scores the mean over them; with
    paired_seeds every setting draws the same runs (they need as many)."""
    settings = [_runs(s) for s in settings]
    if paired_seeds and len({len(r) for r in settings}) > 1:
        raise ValueError(f"paired seeds need as many runs on each side, not {[len(r) for r in settings]}")
    rng = np.random.default_rng([seed, 1])  # the runs' draws, apart from the sentences'
    keys = set.intersection(*({"bleu", *r.values} for runs in settings for r in runs))  # the metrics on() scores
    parts = [[] for _ in settings]
    for w in resample_weights(settings[0][0].n, samples, seed):
        shared = _seed_counts(rng, len(w), len(settings[0])) if paired_seeds else None
        for part, runs in zip(parts, settings):
            counts = shared if paired_seeds else _seed_counts(rng, len(w), len(runs))
            scored = [r.on(w) for r in runs]
            part.append({k: (counts * np.stack([s[k] for s in scored], 1)).sum(1) / len(runs) for k in keys})
    return [{k: np.concatenate([p[k] for p in part]) for k in part[0]} for part in parts]


def _mean(each):  # each run's {metric: value} on all the sentences -> the metrics all have, averaged over the runs
    return {k: float(np.mean([e[k] for e in each])) for k in each[0] if all(k in e for e in each)}


def _bounds(samples, level=LEVEL):
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def intervals(scores, samples=SAMPLES, seed=0):
    """{metric: [low, high]}, the 95% bootstrap interval of each metric of one decoding (a Scores),
    or of a setting's mean over its runs (a list of Scores, one per seed)."""
    return {k: list(_bounds(v)) for k, v in draws([scores], samples, seed)[0].items()}


def paired(a, b, samples=SAMPLES, seed=0, metrics=None, paired_seeds=False):
    """a against b, two decodings of the same sentences, or two settings of several runs each (lists
    of Scores): {metric: {"a", "b", "difference", "low", "high", "p"}}, the difference a - b on all
    sentences (of the runs' means), its 95% interval and two-sided p-value; with several runs,
    "a_runs" and "b_runs" hold each run's figure too."""
    runs_a, runs_b = _runs(a), _runs(b)
    if runs_a[0].n != runs_b[0].n:
        raise ValueError(f"a paired test needs the same sentences: {runs_a[0].n} against {runs_b[0].n}")
    each_a, each_b = [r.whole() for r in runs_a], [r.whole() for r in runs_b]
    whole_a, whole_b = _mean(each_a), _mean(each_b)
    draw_a, draw_b = draws([runs_a, runs_b], samples, seed, paired_seeds)
    out = {}
    for k in metrics or [k for k in whole_a if k in whole_b]:
        d = draw_a[k] - draw_b[k]
        diff = whole_a[k] - whole_b[k]
        flips = int((d <= 0).sum()) if diff > 0 else int((d >= 0).sum()) if diff < 0 else len(d)
        lo, hi = _bounds(d)
        out[k] = {"a": whole_a[k], "b": whole_b[k], "difference": diff, "low": lo, "high": hi,
                  "p": min(1.0, 2 * (1 + flips) / (len(d) + 1))}
        for side, each in (("a", each_a), ("b", each_b)):
            if len(each) > 1:
                out[k][f"{side}_runs"] = [e[k] for e in each]
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


def _value(k, t, side):
    """A side's figure; with several runs, their mean and each run's: '8.76 (8.72 / 8.96 / 8.59)'."""
    runs = t.get(f"{side}_runs")
    return figure(k, t[side]) + (f" ({' / '.join(figure(k, v) for v in runs)})" if runs else "")


def paired_table(baseline_name, results, metrics=("bleu", "token_f1", "exact_match", "cosine_standardized"), samples=SAMPLES):
    """Markdown: one row per system and metric, its difference from the baseline (a setting of
    several runs: their mean, each run's figure in brackets)."""
    lines = [f"| system | metric | system | baseline ({baseline_name}) | difference | 95% interval | p |",
             "|---|---|---:|---:|---:|---|---:|"]
    for name, test in results.items():
        for k in metrics:
            if k in test:
                t = test[k]
                lines.append(f"| {name} | {LABELS[k]} | {_value(k, t, 'a')} | {_value(k, t, 'b')} | {figure(k, t['difference'], '+')} | "
                             f"{figure(k, t['low'], '+')} to {figure(k, t['high'], '+')} | {format_p(t['p'], samples)} |")
    return "\n".join(lines)


def predictions_file(path):
    """An evaluation folder's predictions: predictions.jsonl, or predictions.jsonl.gz (as the evaluations kept
    in experiments/results are stored); path itself where it names a file; None where there is none."""
    if not os.path.isdir(path):
        return path if os.path.isfile(path) else None
    names = (os.path.join(path, name) for name in ("predictions.jsonl", "predictions.jsonl.gz"))
    return next((name for name in names if os.path.isfile(name)), None)


def read_rows(path):
    """The JSON rows of a .jsonl file, gzipped (.gz) or not."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_system(spec):
    """(references, predictions, extra) of an evaluation folder or predictions.jsonl, or of
    FOLDER@CONDITION: a condition of the folder's correction.json (its last step; with its rows'
    standardised cosines where the evaluation wrote them)."""
    from recon.errors import ReconError
    path, _, condition = spec.partition("@")
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = predictions_file(path)
    if file is None:
        raise ReconError(f"{spec}: no predictions.jsonl there; give an evaluation folder that evaluate.py or "
                         "train.py wrote, or its predictions.jsonl")
    rows = read_rows(file)
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
    cosines = conditions[condition].get("cosine_standardized")  # written since the pooled tests
    return references, predictions, {"cosine_standardized": cosines} if cosines else {}


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


def load_setting(spec, order=None):
    """(references, [Scores, one per run]) of SPEC or RUN_A+RUN_B+...: one setting's runs, each
    load_system's rows put in the order of `order` (default: the first run's references)."""
    runs = []
    for part in spec.split("+"):
        references, predictions, extra = load_system(part)
        order = references if order is None else order
        predictions, extra = aligned(references, predictions, extra, order, part)
        runs.append(Scores(predictions, order, extra=extra))
    return order, runs


def compare(baseline, systems, samples=SAMPLES, seed=0, paired_seeds=False):
    """Each system against the baseline, as paired tests: {system spec: paired()}; and the
    baseline's own intervals. Rows are matched by reference text; a spec of runs joined by "+" is
    one setting's seeds (see the module's docstring)."""
    from recon.errors import ReconError
    references, base = load_setting(baseline)
    results = {}
    for spec in systems:
        runs = load_setting(spec, references)[1]
        if paired_seeds and len(runs) != len(base):
            raise ReconError(f"--paired-seeds true pairs run i of {spec} with run i of the baseline: it has {len(runs)} "
                             f"runs and the baseline {len(base)}; give as many, or --paired-seeds false")
        results[spec] = paired(runs, base, samples, seed, paired_seeds=paired_seeds)  # the metrics both have
    return results, intervals(base, samples, seed)


@dataclass
class SignificanceConfig:
    """python -m recon.significance: paired bootstrap tests of evaluations of the same sentences."""

    baseline: str = field(default="", metadata={
        "help": "an evaluation folder, its predictions.jsonl, or FOLDER@CONDITION of a correction.json; "
                "several runs of one setting (its seeds) joined by +"})
    systems: str = field(default="", metadata={
        "help": "comma-separated evaluations to compare with the baseline, each one or several runs joined by + "
                "(none: the baseline's intervals alone)"})
    paired_seeds: bool = field(default=False, metadata={
        "help": "draw the same runs of both sides in each resample: for settings whose i-th runs share weights "
                "(a corrector and its own ablation); independently trained settings keep false"})
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
        results, base_intervals = compare(cfg.baseline, systems, cfg.samples, cfg.seed, cfg.paired_seeds)
    except ReconError as e:
        print_error(e)
        return 2
    runs = len(cfg.baseline.split("+"))
    over = f"{cfg.samples} resamples of its sentences" + (f" and of its {runs} runs" if runs > 1 else "")
    print(f"baseline {cfg.baseline}: 95% intervals over {over}: " + ", ".join(
        f"{LABELS[k]} {figure(k, lo)} to {figure(k, hi)}" for k, (lo, hi) in base_intervals.items() if k in LABELS))
    if results:
        print(paired_table(cfg.baseline, results, samples=cfg.samples))
    if cfg.output:
        with open(cfg.output, "w") as f:
            json.dump({"baseline": cfg.baseline, "baseline_intervals": base_intervals, "samples": cfg.samples,
                       "seed": cfg.seed, "paired_seeds": cfg.paired_seeds, "systems": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
