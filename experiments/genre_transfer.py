"""Does a decoder trained on one genre read vectors of another? Held-out genres, at the default budget.

    python -m recon.corpora --output data/corpus          # first: the corpus (Debian packages, optional)
    python experiments/genre_transfer.py --hold-out quotations,technical --output-dir checkpoints/genre_transfer

Trains one run with the default settings on a balanced mix of the corpus' genres (--per-genre
sentences of each) less the held-out ones, then evaluates it and a Wikipedia-only run (--baseline,
e.g. the default run) on --eval-per-genre sentences of every genre, drawn from the texts that train.py's hash split puts in the test split
(so no run with the default split trained on them). A held-out genre is in neither run's training. The sample is drawn with --seed from data/corpus/<genre>.txt; what was drawn
is written beside the results. Writes results.md and results.json to --output-dir. With
--baseline-only, no mix run: --baseline alone is evaluated on every genre (a new default, re-measured).

Each genre held out in turn (--each): one run per genre on the other genres' mix, evaluated on the
genre it never saw, beside a run on every genre's mix and a run on the Wikipedia summaries alone
(the default data), both evaluated on every genre; all three kinds trained with the same flags:

    python experiments/genre_transfer.py --each --per-genre 4000 --output-dir checkpoints/genre_each -- --max-steps 700
"""

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate as evaluate_script  # noqa: E402
import train as train_script  # noqa: E402
from recon.data import split_of  # noqa: E402


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def write(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in texts)


def train(run, flags):
    """train.py into `run` (validation split for its own evaluation), resumed if interrupted, skipped if done."""
    if os.path.exists(os.path.join(run, "eval-validation", "metrics.json")):
        return
    resume = ["--resume"] if os.path.isdir(run) and any(n.startswith("checkpoint-") for n in os.listdir(run)) else []
    assert train_script.main([*flags, "--output-dir", run, "--eval-split", "validation", *resume]) == 0


def evaluated(checkpoint, texts, out):
    """evaluate.py's metrics of `checkpoint` on the text file `texts` (computed once, kept in `out`)."""
    if not os.path.exists(os.path.join(out, "metrics.json")):
        assert evaluate_script.main(["--checkpoint", checkpoint, "--data", texts, "--output-dir", out,
                                     "--retrieval-pool", "5000"]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def controls(m, key):
    return " / ".join(f"{m.get(f'control_{c}_{key}', float('nan')):.2f}" for c in ("random", "shuffled", "retrieval"))


def each_genre(args, genres, texts_of, evals, data):
    """--each: the table of each genre held out in turn."""
    def mix(name, chosen):
        path = os.path.join(data, f"train-{name}.txt")
        rng = random.Random(args.seed)
        texts = [t for g in chosen for t in texts_of[g][:args.per_genre]]
        rng.shuffle(texts)
        write(path, texts)
        return path
    train(os.path.join(args.output_dir, "wikipedia"), args.train_args)  # the default data
    train(os.path.join(args.output_dir, "all"), ["--data", mix("all", genres), *args.train_args])
    rows = []
    for g in genres:
        run = os.path.join(args.output_dir, f"without-{g}")
        train(run, ["--data", mix(f"without-{g}", [h for h in genres if h != g]), *args.train_args])
        got = {name: evaluated(os.path.join(args.output_dir, folder), evals[g],
                               os.path.join(args.output_dir, "eval", folder, g))
               for name, folder in (("wikipedia only", "wikipedia"), ("the other genres", f"without-{g}"),
                                    ("every genre", "all"))}
        rows.append((g, got))
    lines = ["| genre evaluated | run | trained on this genre | BLEU | token F1 | random / shuffled / retrieval BLEU | "
             "random / shuffled / retrieval F1 | std cosine | eval texts seen in training |",
             "|---|---|---|---:|---:|---|---|---:|---:|"]
    for g, got in rows:
        for name, m in got.items():
            seen = {"wikipedia only": g == "encyclopedia", "the other genres": False, "every genre": True}[name]
            lines.append(f"| {g} | {name} | {'yes' if seen else 'no'} | {m['bleu']:.2f} | {m['token_f1']:.2f} | "
                         f"{controls(m, 'bleu')} | {controls(m, 'token_f1')} | {m['cosine_standardized']:.3f} | "
                         f"{m['overlap_texts_in_train']} |")
    table = "\n".join(lines)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(f"Each genre held out in turn; {args.per_genre} training sentences per genre in the mixes, the "
                f"Wikipedia-only run on the default data; train.py flags: {' '.join(args.train_args) or 'none'}; "
                f"{args.eval_per_genre} evaluated per genre, seed {args.seed}.\n\n{table}\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({f"{name}|{g}": {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
                   for g, got in rows for name, m in got.items()}, f, indent=2)
    print(table)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--hold-out", default="quotations,technical", help="comma-separated genres left out of training")
    p.add_argument("--per-genre", type=int, default=7000, help="training sentences drawn from each trained genre")
    p.add_argument("--eval-per-genre", type=int, default=500, help="evaluation sentences drawn from each genre")
    p.add_argument("--baseline", default="checkpoints/default", help="a run trained on the Wikipedia summaries")
    p.add_argument("--output-dir", default="checkpoints/genre_transfer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-only", action="store_true",
                   help="evaluate --baseline alone on every genre (no mix run is trained)")
    p.add_argument("--each", action="store_true",
                   help="hold each genre out in turn (one run per genre), beside an all-genre run and a Wikipedia-only "
                        "run trained with the same flags (--hold-out and --baseline are not used)")
    p.add_argument("--samples-only", action="store_true",
                   help="write the evaluation samples (OUTPUT_DIR/data/eval-<genre>.txt) and stop: no training, no evaluation")
    p.add_argument("train_args", nargs="*", help="more train.py flags, after --")
    args = p.parse_args(argv)
    with open(os.path.join(args.corpus, "sources.json")) as f:
        genres = sorted(json.load(f)["genres"])
    held = args.hold_out.split(",")
    assert set(held) <= set(genres), f"--hold-out names genres not in {genres}"
    data = os.path.join(args.output_dir, "data")
    os.makedirs(data, exist_ok=True)
    rng = random.Random(args.seed)
    train_texts, evals, texts_of = [], {}, {}
    for g in genres:
        texts = read(os.path.join(args.corpus, f"{g}.txt"))
        rng.shuffle(texts)
        # evaluated: texts of the test split by train.py's text hash (default fractions), so that no
        # run trained with the default split has seen them, whatever file it was trained on
        test = [t for t in texts if split_of(t, 0.02, 0.05) == "test"]
        evals[g] = os.path.join(data, f"eval-{g}.txt")
        write(evals[g], test[:args.eval_per_genre])
        texts_of[g] = texts
        if g not in held:
            train_texts += texts[:args.per_genre]  # its test-split texts stay out of training too
    if args.samples_only:
        return 0
    if args.each:
        return each_genre(args, genres, texts_of, evals, data)
    rng.shuffle(train_texts)
    mix = os.path.join(data, "train-mix.txt")
    write(mix, train_texts)
    run = os.path.join(args.output_dir, "mix")
    runs = (("wikipedia only", args.baseline),) + (() if args.baseline_only else (("mix", run),))
    if not args.baseline_only:
        train(run, ["--data", mix, *args.train_args])
    results = {(name, g): evaluated(checkpoint, evals[g], os.path.join(args.output_dir, "eval", name.replace(" ", "-"), g))
               for name, checkpoint in runs for g in genres}
    lines = ["| genre | in training of | run | BLEU | token F1 | random / shuffled / retrieval BLEU | "
             "random / shuffled / retrieval F1 | std cosine | eval texts seen in training |",
             "|---|---|---|---:|---:|---|---|---:|---:|"]
    for g in genres:
        if args.baseline_only:
            trained = "wikipedia only" if g == "encyclopedia" else "neither"
        else:
            trained = "wikipedia only, mix" if g == "encyclopedia" else ("neither" if g in held else "mix")
        for name, _ in runs:
            m = results[(name, g)]
            lines.append(f"| {g} | {trained} | {name} | {m['bleu']:.2f} | {m['token_f1']:.2f} | {controls(m, 'bleu')} | "
                         f"{controls(m, 'token_f1')} | {m['cosine_standardized']:.3f} | {m['overlap_texts_in_train']} |")
    table = "\n".join(lines)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        head = (f"{args.baseline} alone" if args.baseline_only else
                f"Held out: {', '.join(held)}; {args.per_genre} training sentences per trained genre")
        f.write(f"{head}; {args.eval_per_genre} evaluated per genre, seed {args.seed}.\n\n{table}\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({f"{n}|{g}": {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
                   for (n, g), m in results.items()}, f, indent=2)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
