"""The correction loop of the README's headline on genres the default never trains on.

    python -m recon.corpora --output data/corpus       # first: the corpus (Debian packages, optional)
    python experiments/genre_transfer.py --samples-only --output-dir checkpoints/genre_sample2
    python experiments/genre_loop.py --corrector checkpoints/exp/corr_s0 --companions checkpoints/exp/def_s1 \
        --samples checkpoints/genre_sample2/data --n 100 --output-dir checkpoints/genre_loop

For each genre but the encyclopedia (the default's own), evaluate.py decodes the first --n sentences of the
genre sample with both decoders' 8-beam first passes, 6 steps of pooled vector feedback and 4 corrector steps
(the settings read once on the test split), beside the no-feedback ablation and the controls; an evaluation
already written is kept. Writes results.md (each genre's greedy pass, pooled first pass, after the feedback,
after the corrector, no feedback, controls) to --output-dir.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate as evaluate_script  # noqa: E402
from recon.significance import format_p  # noqa: E402

GENRES = ("computing", "definitions", "dictionary-1913", "quotations", "scripture", "technical")
LOOP = ["--num-beams", "8", "--feedback-steps", "6", "--feedback-beam", "8", "--correction-steps", "4",
        "--correction-beam", "4", "--correction-rate", "0.15", "--correction-ablations", "no-feedback"]


def evaluated(args, genre):
    out = os.path.join(args.output_dir, genre)
    if not os.path.exists(os.path.join(out, "correction.json")):
        assert evaluate_script.main(["--checkpoint", args.corrector, "--companions", args.companions,
                                     "--data", os.path.join(args.samples, f"eval-{genre}.txt"),
                                     "--max-examples", str(args.n), "--retrieval-pool", "5000", *LOOP,
                                     "--output-dir", out]) == 0
    with open(os.path.join(out, "correction.json")) as f, open(os.path.join(out, "metrics.json")) as g:
        return json.load(f), json.load(g)


def cell(point):
    return f"{point['bleu']:.2f} / {point['token_f1']:.1f} / {point['cosine_standardized']:.3f}"


def row(genre, correction, metrics):
    curve = correction["conditions"]["correction"]["curve"]
    feedback_end = correction["feedback_steps"]
    blind = correction["conditions"]["no feedback"]["curve"][-1]
    tests = correction["tests"]
    gain = tests["no feedback"]
    return (f"| {genre} | {metrics['num_examples']} | {cell(correction['greedy'])} | {cell(curve[0])} | "
            f"{cell(curve[feedback_end])} | **{cell(curve[-1])}** | {cell(blind)} | "
            f"{gain['token_f1']['difference']:+.2f} (p {format_p(gain['token_f1']['p'])}), "
            f"{gain['cosine_standardized']['difference']:+.3f} (p {format_p(gain['cosine_standardized']['p'])}) | "
            f"{metrics['control_random_bleu']:.2f} / {metrics['control_shuffled_bleu']:.2f} / "
            f"{metrics['control_retrieval_bleu']:.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corrector", required=True, help="a corrector run (its base is the plain decoder)")
    p.add_argument("--companions", required=True, help="comma-separated decoders of the same vectors")
    p.add_argument("--samples", required=True, help="the folder of eval-<genre>.txt (genre_transfer.py --samples-only)")
    p.add_argument("--n", type=int, default=100, help="sentences of each genre")
    p.add_argument("--output-dir", default="checkpoints/genre_loop")
    args = p.parse_args(argv)
    lines = ["| genre (unseen) | sentences | greedy pass: BLEU / token F1 / cosine (std.) | both decoders' 8 beams "
             "(step 0) | after 6 feedback steps | after 4 corrector steps | no feedback, 10 steps | "
             "feedback minus no feedback: token F1, cosine | controls BLEU: random / shuffled / retrieval |",
             "|---|---:|---|---|---|---|---|---|---|"]
    lines += [row(g, *evaluated(args, g)) for g in GENRES]
    table = "\n".join(lines)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(f"{args.corrector} with {args.companions}; the first {args.n} sentences of each genre sample "
                f"({args.samples}), up to 32 encoder tokens.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
