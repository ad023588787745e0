"""One table row per run folder: its final validation loss, the final evaluation beside its controls,
and the decoder's content-word recall (the share of each reference's content words, as the probes
count them, that the reconstruction writes). What the decoder ablations in docs/findings.md print.

    python experiments/decoder_table.py checkpoints/exp/e0_default checkpoints/exp/e1_drop0 ...

Each run must have been trained with its final evaluation (eval-validation/ or eval-test/).
"""

import json
import os
import sys

from recon import ReconModel
from recon.probes import bow_task, written_content

COLUMNS = ("run", "steps", "val loss", "BLEU", "random", "shuffled", "token F1", "content recall %",
           "repeated 3-gram %", "cosine (std.)")


def content_recall(train_texts, references, predictions, vocab_size=10000, stop=50):
    """% of the references' content words (the vocab_size commonest training words, less the stop
    commonest) that the predictions write: the decoder side of recon.probes.decoder_vs_probe."""
    task = bow_task({"train": train_texts, "test": references}, vocab_size, stop)
    pairs = list(written_content(task, predictions))
    return 100 * sum(len(w) for _, w in pairs) / max(sum(len(t) for t, _ in pairs), 1)


def row(run, train_texts_of):
    evals = [d for d in ("eval-validation", "eval-test") if os.path.isdir(os.path.join(run, d))]
    if not evals:
        raise SystemExit(f"{run} has no final evaluation (eval-validation/ or eval-test/)")
    m = json.load(open(os.path.join(run, evals[0], "metrics.json")))
    preds = [json.loads(line) for line in open(os.path.join(run, evals[0], "predictions.jsonl"))]
    log = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    val = [r["val_loss"] for r in log if "val_loss" in r]
    recall = content_recall(train_texts_of(run), [p["reference"] for p in preds], [p["prediction"] for p in preds])
    return [os.path.basename(run.rstrip("/")), log[-1]["step"], f"{val[-1]:.3f}" if val else "", f"{m['bleu']:.2f}",
            f"{m['control_random_bleu']:.2f}", f"{m['control_shuffled_bleu']:.2f}", f"{m['token_f1']:.2f}",
            f"{recall:.1f}", f"{m['repeated_3gram']:.1f}", f"{m['cosine_standardized']:.3f}"]


def main(argv=None):
    runs = sys.argv[1:] if argv is None else argv
    if not runs:
        raise SystemExit(__doc__)
    corpora = {}

    def train_texts_of(run):  # the run's training split, rebuilt as evaluate.py rebuilds it
        key = json.load(open(os.path.join(run, "data.json")))["corpus_hash"]
        if key not in corpora:
            corpora[key] = ReconModel.from_pretrained(run).training_corpus()
        return corpora[key].texts("train")

    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for run in runs:
        print("| " + " | ".join(str(x) for x in row(run, train_texts_of)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
