"""Probes: what a sentence vector holds, measured by small classifiers that read it, in the
tradition of Adi et al. 2017 and Conneau et al. 2018 ("What you can cram into a single vector").

Tasks, built from the corpus's own splits (SentEval's probing format on export):
  sentlen  the sentence's length in words, in SentEval's 6 bins (5-8, 9-12, ..., 26-28 words)
  wc       which of N mid-frequency words a sentence holds (sentences holding exactly one of them)
  bshift   whether two adjacent words were swapped (the perturbed sentences are encoded anew)
  bow      a bag of words over the V commonest words: recall at |s| (each sentence's k words
           against the probe's top k), over all words and over content words (the STOP commonest
           words left out)
Each is read by a linear probe and by one with a hidden layer, trained on the training split (the
validation split picks the epoch) and scored on the test split, beside a probe trained and scored
on random vectors with the real vectors' mean and covariance, and the majority baseline.

Decoder beside probe: on the same test vectors, the content-word recall of a decoder's
reconstructions against the bag-of-words probe's, and the share of the words the probe recovers
that the decoder also writes: does the decoder read what the vector holds? The checkpoint's greedy
pass always; any other decoding (beams and rerank, correction) from its evaluation's predictions.

    python -m recon.probes --checkpoint checkpoints/default --output-dir checkpoints/default/probes
    python -m recon.probes --checkpoint checkpoints/default --output-dir probes \
        --predictions checkpoints/corrector/eval-test/predictions.jsonl      # a corrected decoding beside greedy
    python -m recon.probes --representation mean --layer 3 --output-dir probes-mean3   # any encoder, no decoder
"""

import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from recon.cache import cached_encode, encoder_cache
from recon.encoder import EncoderSpec
from recon.errors import ReconError, check
from recon.evaluation import matched_random_vectors
from recon.metrics import normalize_loose
from recon.significance import read_rows

LENGTH_BINS = ((5, 8), (9, 12), (13, 16), (17, 20), (21, 25), (26, 28))  # SentEval's SentLen, in words
SPLITS = ("train", "validation", "test")
SENTEVAL_SPLIT = {"train": "tr", "validation": "va", "test": "te"}
TASK_NAMES = {"sentlen": "sentence_length", "wc": "word_content", "bshift": "bigram_shift", "bow": "bag_of_words"}


def words(text):
    """The words probes count: lowercased, accents and punctuation stripped (as token F1 does)."""
    return normalize_loose(text).split()


@dataclass
class Task:
    """A probing task: per split, the texts to encode and their labels (a class index, or for a
    multi-label task the list of word ids present)."""
    name: str
    texts: dict
    labels: dict
    classes: list
    multilabel: bool = False
    info: dict = field(default_factory=dict)


def sentlen_task(splits):
    def bin_of(n):
        return next((i for i, (lo, hi) in enumerate(LENGTH_BINS) if lo <= n <= hi), None)
    texts, labels = {}, {}
    for s, xs in splits.items():
        keep = [(t, b) for t in xs if (b := bin_of(len(t.split()))) is not None]
        texts[s], labels[s] = [t for t, _ in keep], [b for _, b in keep]
    return Task("sentlen", texts, labels, [f"{lo}-{hi}" for lo, hi in LENGTH_BINS])


def word_counts(texts):
    return Counter(w for t in texts for w in set(words(t)))


def wc_task(splits, n_words=1000, skip=None):
    """The n_words words after the `skip` commonest (by training sentences holding them); only
    sentences that hold exactly one of them, labelled with it. skip defaults to n_words // 2."""
    ranked = [w for w, _ in word_counts(splits["train"]).most_common() if w.isalpha() and len(w) > 1]
    skip = n_words // 2 if skip is None else skip
    chosen = ranked[skip:skip + n_words]
    index = {w: i for i, w in enumerate(chosen)}
    texts, labels = {}, {}
    for s, xs in splits.items():
        keep = [(t, hits[0]) for t in xs if len(hits := [index[w] for w in set(words(t)) if w in index]) == 1]
        texts[s], labels[s] = [t for t, _ in keep], [i for _, i in keep]
    return Task("wc", texts, labels, chosen, info={"skip": skip, "words": len(chosen)})


def bshift(text, rng):
    """The text with one random pair of adjacent words swapped (None when too short or a no-op)."""
    ws = text.split()
    pairs = [i for i in range(len(ws) - 1) if ws[i] != ws[i + 1]]
    if not pairs:
        return None
    i = rng.choice(pairs)
    ws[i], ws[i + 1] = ws[i + 1], ws[i]
    return " ".join(ws)


def bshift_task(splits, seed=0):
    rng = random.Random(seed)
    texts, labels = {}, {}
    for s, xs in splits.items():
        texts[s], labels[s] = [], []
        for t in xs:
            swapped = bshift(t, rng) if len(t.split()) >= 4 and rng.random() < 0.5 else None
            texts[s].append(swapped or t)
            labels[s].append(int(swapped is not None))
    return Task("bshift", texts, labels, ["original", "inverted"])


def bow_task(splits, vocab_size=10000, stop=50):
    ranked = [w for w, _ in word_counts(splits["train"]).most_common(vocab_size)]
    index = {w: i for i, w in enumerate(ranked)}
    labels = {s: [sorted({index[w] for w in words(t) if w in index}) for t in xs] for s, xs in splits.items()}
    return Task("bow", dict(splits), labels, ranked, multilabel=True, info={"stop": stop, "vocab_size": len(ranked)})


# ----------------------------------------------------------------------------------------------
# probes


def _multi_hot(labels, n):
    y = torch.zeros(len(labels), n)
    for i, ids in enumerate(labels):
        y[i, ids] = 1.0
    return y


def _targets(task, split):
    if task.multilabel:
        return _multi_hot(task.labels[split], len(task.classes))
    return torch.tensor(task.labels[split], dtype=torch.long)


def _loss(logits, y, multilabel):
    if multilabel:  # the bag as a distribution: -mean log p(w) over the sentence's words
        return -(logits.log_softmax(-1) * y).sum(-1).div(y.sum(-1).clamp(min=1)).mean()
    return F.cross_entropy(logits, y)


def score(task, logits, split):
    """Accuracy (%), or for the bag of words recall at |s| (%) over all and over content words."""
    if not task.multilabel:
        return {"accuracy": 100 * (logits.argmax(-1) == _targets(task, split)).float().mean().item()}
    stop = task.info["stop"]
    content = logits.clone()
    content[:, :stop] = float("-inf")  # the `stop` commonest words are ids 0..stop-1
    hits = {"all": [0, 0], "content": [0, 0]}
    for row, row_c, ids in zip(logits, content, task.labels[split]):
        for key, r, want in (("all", row, ids), ("content", row_c, [i for i in ids if i >= stop])):
            if want:
                top = set(r.topk(len(want)).indices.tolist())
                hits[key][0] += len(top & set(want))
                hits[key][1] += len(want)
    return {f"recall_{k}": 100 * h / max(n, 1) for k, (h, n) in hits.items()}


def fit_probe(task, x, hidden=0, epochs=10, lr=1e-3, weight_decay=1e-4, batch_size=256, seed=0):
    """Train a linear (hidden=0) or one-hidden-layer probe on x["train"]; the epoch with the best
    validation score is kept. x: split -> (N, D) vectors. Returns (probe, mean, std)."""
    torch.manual_seed(seed)
    mean, std = x["train"].mean(0), x["train"].std(0).clamp(min=1e-6)
    d, n_out = x["train"].shape[1], len(task.classes)
    probe = nn.Linear(d, n_out) if not hidden else nn.Sequential(
        nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, n_out))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    xs, ys = (x["train"] - mean) / std, _targets(task, "train")
    best, best_state = None, None
    for _ in range(epochs):
        probe.train()
        for idx in torch.randperm(len(xs)).split(batch_size):
            loss = _loss(probe(xs[idx]), ys[idx], task.multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if "validation" in x and len(x["validation"]):
            val = next(iter(score(task, predict(probe, x["validation"], mean, std), "validation").values()))
            if best is None or val > best:
                best, best_state = val, {k: v.clone() for k, v in probe.state_dict().items()}
    if best_state is not None:
        probe.load_state_dict(best_state)
    return probe.eval(), mean, std


@torch.no_grad()
def predict(probe, x, mean, std):
    was = probe.training
    probe.eval()
    out = probe((x - mean) / std)
    probe.train(was)
    return out


def majority(task):
    """The best score without the vector: the commonest training label (bag of words: the
    commonest training words)."""
    if not task.multilabel:
        counts = Counter(task.labels["train"])
        top = counts.most_common(1)[0][0]
        return {"accuracy": 100 * sum(y == top for y in task.labels["test"]) / max(len(task.labels["test"]), 1)}
    freq = _multi_hot(task.labels["train"], len(task.classes)).sum(0)  # (V,)
    return score(task, freq.expand(len(task.labels["test"]), -1), "test")


def random_like(x, seed):
    """For each split, Gaussian vectors with the mean and covariance of its real ones."""
    return {s: matched_random_vectors(v, seed + i) for i, (s, v) in enumerate(x.items())}


# ----------------------------------------------------------------------------------------------
# running the tasks


def build_tasks(splits, names=tuple(TASK_NAMES), wc_words=1000, bow_vocab=10000, stop=50, seed=0):
    make = {"sentlen": lambda: sentlen_task(splits), "wc": lambda: wc_task(splits, wc_words),
            "bshift": lambda: bshift_task(splits, seed), "bow": lambda: bow_task(splits, bow_vocab, stop)}
    return [make[n]() for n in names]


def task_vectors(task, known, encode):
    """split -> (N, D) vectors of the task's texts: looked up in `known` (text -> vector), the
    rest (bshift's perturbed sentences) encoded in one call."""
    missing = sorted({t for xs in task.texts.values() for t in xs if t not in known})
    if missing:
        known = {**known, **dict(zip(missing, encode(missing)))}
    return {s: torch.stack([known[t] for t in xs]) if xs else torch.empty(0) for s, xs in task.texts.items()}


def run_task(task, x, hidden=512, epochs=10, seed=0, log=print):
    """Linear and hidden-layer probes on the vectors and on random ones, and the majority baseline.
    Returns (results, the hidden-layer probe's test logits)."""
    out = {"examples": {s: len(v) for s, v in x.items()}, "majority": majority(task)}
    rnd = random_like(x, seed)
    for name, h in (("linear", 0), ("mlp", hidden)):
        probe, mean, std = fit_probe(task, x, h, epochs, seed=seed)
        logits = predict(probe, x["test"], mean, std)
        out[name] = score(task, logits, "test")
        if h:
            kept = logits
        probe, mean, std = fit_probe(task, rnd, h, epochs, seed=seed)
        out[f"random_{name}"] = score(task, predict(probe, rnd["test"], mean, std), "test")
    log(f"probe {task.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in out["mlp"].items()) + " (hidden layer); "
        + ", ".join(f"{k} {v:.1f}" for k, v in out["linear"].items()) + " (linear)")
    return out, kept


def written_content(task, predictions, split="test"):
    """Per text of `split` of the bag-of-words task: (its content words, those of them the prediction
    writes), as sets of word ids; content words are in the task's vocabulary, outside its `stop`
    commonest."""
    stop, index = task.info["stop"], {w: i for i, w in enumerate(task.classes)}
    for ids, pred in zip(task.labels[split], predictions):
        truth = {i for i in ids if i >= stop}
        yield truth, truth & {index[w] for w in words(pred) if w in index}


def decoder_vs_probe(task, probe_logits, predictions):
    """On the test split of the bag-of-words task: the content words (in the probe's vocabulary,
    outside its `stop` commonest) that the probe recovers at |s| and that the decoder writes.
    predictions: the decoder's reconstruction of each test text, in order."""
    logits = probe_logits.clone()
    logits[:, :task.info["stop"]] = float("-inf")
    want = written = recovered = both = 0
    for row, (truth, decoder) in zip(logits, written_content(task, predictions)):
        if not truth:
            continue
        probe = truth & set(row.topk(len(truth)).indices.tolist())
        want, written, recovered, both = want + len(truth), written + len(decoder), recovered + len(probe), both + len(probe & decoder)
    return {"content_words": want, "decoder_content_recall": 100 * written / max(want, 1),
            "probe_content_recall": 100 * recovered / max(want, 1),
            "decoder_over_probe": written / max(recovered, 1),
            "probe_words_the_decoder_writes": 100 * both / max(recovered, 1)}


def run_probes(splits, split_vectors, encode, decodings=None, names=tuple(TASK_NAMES), hidden=512, epochs=10,
               wc_words=1000, bow_vocab=10000, stop=50, seed=0, log=print):
    """Every task on one encoder's vectors. splits: split -> texts; split_vectors: split -> (N, D)
    vectors of those texts; encode: texts -> vectors (for perturbed sentences); decodings: label ->
    a decoder's reconstructions of splits["test"], in order, each set beside the bag-of-words probe
    (results["decodings"]; the first is also results["decoder_vs_probe"]). Returns the results dict."""
    known = {t: v for s in SPLITS for t, v in zip(splits[s], split_vectors[s])}
    results = {"settings": {"hidden": hidden, "epochs": epochs, "wc_words": wc_words, "bow_vocab": bow_vocab,
                            "stop": stop, "seed": seed}, "tasks": {}}
    for task in build_tasks(splits, names, wc_words, bow_vocab, stop, seed):
        if len(task.classes) < 2 or not all(task.texts[s] for s in ("train", "test")):
            results["tasks"][task.name] = {"skipped": f"{len(task.classes)} classes, "
                                                      f"{ {s: len(x) for s, x in task.texts.items()} } examples"}
            log(f"probe {task.name}: skipped, too little data ({results['tasks'][task.name]['skipped']})")
            continue
        res, logits = run_task(task, task_vectors(task, known, encode), hidden, epochs, seed, log)
        results["tasks"][task.name] = {**res, **task.info}
        if task.name == "bow" and decodings:
            results["decodings"] = [{"decoding": label, **decoder_vs_probe(task, logits, predictions)}
                                    for label, predictions in decodings.items()]
            results["decoder_vs_probe"] = results["decodings"][0]
    return results


def read_predictions(path, texts):
    """The prediction for each of `texts`, from a predictions.jsonl (or .jsonl.gz) that evaluate.py wrote (matched by
    its reference), and a label for its decoding (from the metrics.json beside it)."""
    if not os.path.isfile(path):
        raise ReconError(f"--predictions {path}: no such file; give the predictions.jsonl that evaluate.py wrote")
    by_reference = {row["reference"]: row["prediction"] for row in read_rows(path)}
    missing = [t for t in texts if t not in by_reference]
    if missing:
        raise ReconError(f"{path} has no prediction for {len(missing)} of the {len(texts)} test sentences (such as "
                         f"{missing[0][:60]!r}): give the predictions of `evaluate.py` on the whole test split of the "
                         "same data (no --max-examples, no --split)")
    label = path
    metrics = os.path.join(os.path.dirname(path), "metrics.json")
    if os.path.isfile(metrics):
        from recon.report import decoding_label
        with open(metrics) as f:
            label = decoding_label(json.load(f)["decoding"])
    return [by_reference[t] for t in texts], label


def export_senteval(splits, folder, names=("sentlen", "wc", "bshift"), wc_words=1000, seed=0):
    """The tasks as SentEval's probing files: one line per example, `tr|va|te <tab> label <tab> text`."""
    os.makedirs(folder, exist_ok=True)
    for task in build_tasks(splits, names, wc_words, seed=seed):
        with open(os.path.join(folder, f"{TASK_NAMES[task.name]}.txt"), "w", encoding="utf-8") as f:
            for s in SPLITS:
                for t, y in zip(task.texts[s], task.labels[s]):
                    f.write(f"{SENTEVAL_SPLIT[s]}\t{task.classes[y]}\t{t}\n")


def probe_encoder(encoder, spec, corpus, settings, cache_dir="", batch_size=256, model=None, seed=0, log=print,
                  prediction_files=()):
    """run_probes on `encoder`'s vectors of `corpus` (spec: its EncoderSpec, for the cache);
    with `model`, its own reconstructions of the test split (greedy; a corrector's default loop) are
    set beside the probe, and so is each of `prediction_files` (evaluate.py's predictions.jsonl)."""
    cache_dir, encoder_id = encoder_cache(spec, encoder, cache_dir)

    def encode(texts):
        return cached_encode(encoder, texts, cache_dir, encoder_id, batch_size)[0].float().cpu()
    splits = {s: corpus.texts(s, copies=False) for s in SPLITS}  # a probe reads sentences as written
    given = [read_predictions(path, splits["test"]) + (path,) for path in prediction_files]  # refused before any work
    vectors = {s: encode(xs) for s, xs in splits.items()}
    decodings = {}
    if model is not None:
        label = "greedy, no ban" if model.base is None else f"greedy, then {model.correction_steps} correction steps"
        decodings[label] = model.generate_from_vectors(vectors["test"], batch_size=batch_size)
    for predictions, label, path in given:
        decodings[label if label not in decodings else f"{label} ({path})"] = predictions
    return run_probes(splits, vectors, encode, decodings, tuple(settings.probe_tasks.split(",")),
                      settings.probe_hidden, settings.probe_epochs, settings.wc_words, settings.bow_vocab,
                      settings.stop_words, seed, log)


def probe_and_report(encoder, spec, data, settings, output_dir, cache_dir="", batch_size=256, model=None,
                     checkpoint=None, seed=0, log=print, prediction_files=()):
    """probe_encoder on `data` (a DataConfig), written to output_dir as probes.json, .md and .png."""
    from recon.report import write_probe_report
    corpus = data.build(encoder.count_tokens, spec.max_length)
    results = probe_encoder(encoder, spec, corpus, settings, cache_dir, batch_size, model, seed, log, prediction_files)
    results.update(encoder=spec.encoder, representation=spec.representation, layer=spec.layer, checkpoint=checkpoint,
                   data=data.data)
    write_probe_report(output_dir, results, f"probes: {checkpoint or spec.encoder} ({spec.representation}, "
                       f"layer {spec.layer}) on {data.data}")
    log(f"probes written to {output_dir}/probes.md")
    return results


def probe_checkpoint(folder, model, settings, output_dir, cache_dir="", batch_size=256, seed=0, log=print,
                     prediction_files=()):
    """The probes on a checkpoint's vectors of its own training data, its decoder beside them (and
    the decodings of `prediction_files`, evaluate.py's predictions.jsonl of that test split)."""
    from recon.checkpoint import load_meta
    from recon.data import DataConfig
    data = DataConfig.from_meta(load_meta(folder).get("args", {}))[0]
    return probe_and_report(model.encoder, model.config.encoder_spec, data, settings, output_dir, cache_dir,
                            batch_size, model, folder, seed, log, prediction_files)


def main(argv=None):
    from recon.checkpoint import resolve_checkpoint
    from recon.config import ProbeConfig, ProbeSettings, parse
    from recon.data import DataConfig
    from recon.device import keep_freed_memory
    from recon.errors import ReconError, print_error
    from recon.model import ReconModel
    from recon.progress import quiet_libraries
    from recon.spec import part

    quiet_libraries()
    keep_freed_memory()
    try:
        cfg = parse(ProbeConfig, argv)
        device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        settings = part(ProbeSettings, cfg)
        if cfg.checkpoint:
            folder = resolve_checkpoint(cfg.checkpoint)
            model = ReconModel.from_pretrained(folder, device=device)
            model.set_precisions(cfg.encoder_precision, cfg.generation_precision)  # unset: as the checkpoint's run ran
            probe_checkpoint(folder, model, settings, cfg.output_dir, cfg.cache_dir, cfg.batch_size, cfg.seed, prediction_files=cfg.prediction_files)
        else:
            check(cfg.generation_precision is None, "--generation-precision is the precision of a checkpoint's "
                  "decoder: give --checkpoint, or drop it for a bare encoder, which generates nothing")
            spec, data = part(EncoderSpec, cfg), part(DataConfig, cfg)
            encoder = spec.build().to(device).eval()
            encoder.precision = cfg.encoder_precision or "auto"
            if cfg.export_senteval:
                corpus = data.build(encoder.count_tokens, spec.max_length)
                export_senteval({s: corpus.texts(s, copies=False) for s in SPLITS}, cfg.export_senteval, wc_words=cfg.wc_words,
                                seed=cfg.seed)
            probe_and_report(encoder, spec, data, settings, cfg.output_dir, cfg.cache_dir, cfg.batch_size, seed=cfg.seed,
                             prediction_files=cfg.prediction_files)
    except ReconError as e:
        print_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
