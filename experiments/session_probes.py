"""Probes beside a GPU session's runs: what the vector holds, and the share of it their decoders write.

A session's runs come back without weights, with their test predictions (predictions.jsonl: a
random sample of the test split when the plan set --eval-max-examples). This trains the probes of
recon.probes on the runs' encoder and representation here, on a sample of the same corpus's
training and validation splits (recon's hash split, so every sentence is in the split it was in
there), and scores them on exactly the sentences the runs decoded, with each run's predictions set
beside the probe (the decoder's content-word recall against the probe's, and the share of the
words the probe recovers that the decoder also writes). Runs of one representation share a probe.

    python experiments/session_probes.py --runs session_results/2-headline --data data/corpus/all.txt \
        --output-dir checkpoints/session_probes
    python experiments/session_probes.py ... -- --probe-tasks bow   # flags after -- go to recon.probes

The encoder here is the full-precision one; a session runs its packed copy (int8 rows: standardised
cosine 0.999 to these vectors, docs/scale.md).
"""

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon import probes  # noqa: E402
from recon.data import DataConfig  # noqa: E402
from recon.encoder import EncoderSpec  # noqa: E402


SPLIT = ("max_length", "validation_fraction", "test_fraction", "split_seed")  # what decides each text's split


def read_runs(folder):
    """{(representation, layer): [predictions.jsonl, ...]} and the split settings the runs share,
    from each run's meta.json."""
    groups, settings = {}, set()
    for name in sorted(os.listdir(folder)):
        meta, preds = (os.path.join(folder, name, f) for f in ("meta.json", "eval-test/predictions.jsonl"))
        if not (os.path.isfile(meta) and os.path.isfile(preds)):
            continue
        args = json.load(open(meta))["args"]
        groups.setdefault((args.get("representation", "cls"), args.get("layer", -1)), []).append(preds)
        settings.add(tuple((k, args[k]) for k in SPLIT if k in args))
    if not groups:
        raise SystemExit(f"{folder} holds no run with meta.json and eval-test/predictions.jsonl")
    if len(settings) > 1:
        raise SystemExit(f"the runs in {folder} split their texts differently: {sorted(settings)}")
    return groups, dict(settings.pop())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", required=True, help="a session part's results folder (one folder per run)")
    p.add_argument("--data", required=True, help="the corpus the runs trained on (the pack's file, as a text file here)")
    p.add_argument("--train", type=int, default=60000, help="training sentences the probes learn from")
    p.add_argument("--validation", type=int, default=3000, help="validation sentences (pick the probes' epoch)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", default=None, help="the runs' encoder here (default: recon's, all-MiniLM-L6-v2)")
    p.add_argument("probe_flags", nargs="*", help="after --: more flags for recon.probes (--wc-words 500 ...)")
    args = p.parse_args(argv)
    groups, split = read_runs(args.runs)
    os.makedirs(args.output_dir, exist_ok=True)
    max_length = split.get("max_length", 32)
    encoder = EncoderSpec(max_length=max_length, **({"encoder": args.encoder} if args.encoder else {})).build().eval()
    fractions = {k: v for k, v in split.items() if k != "max_length"}
    corpus = DataConfig(data=args.data, **fractions).build(encoder.count_tokens, max_length)
    first = next(iter(groups.values()))[0]
    decoded = [json.loads(line)["reference"] for line in open(first) if line.strip()]
    test = set(corpus.texts("test"))
    outside = [t for t in decoded if t not in test]
    if outside:
        raise SystemExit(f"{len(outside)} of the {len(decoded)} decoded sentences are not in this corpus's test "
                         f"split (the first: {outside[0]!r}): give the corpus the runs trained on")
    rng = random.Random(args.seed)
    texts = (rng.sample(corpus.texts("train"), min(args.train, len(corpus.texts("train"))))
             + rng.sample(corpus.texts("validation"), min(args.validation, len(corpus.texts("validation"))))
             + decoded)
    path = os.path.join(args.output_dir, "texts.txt")
    with open(path, "w") as f:
        f.write("\n".join(texts) + "\n")
    print(f"{len(texts):,} texts in {path}: the {len(decoded):,} decoded test sentences and samples of the "
          f"training and validation splits", flush=True)
    for (representation, layer), files in groups.items():
        out = os.path.join(args.output_dir, f"{representation}-layer{layer}")
        flags = [f for k, v in fractions.items() for f in (f"--{k.replace('_', '-')}", str(v))]
        flags += ["--encoder", args.encoder] if args.encoder else []
        code = probes.main(["--data", path, "--max-length", str(max_length), "--representation", representation,
                            "--layer", str(layer), "--predictions", ",".join(files), "--output-dir", out,
                            "--seed", str(args.seed), "--cache-dir", "", *flags, *args.probe_flags])
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
