"""Decoding speed of this working tree against another commit's code, on a trained checkpoint: the
same vectors (the first N sentences of its run's validation split) decoded greedily and with its
run's beam search (no rerank: its re-encoding is the encoder's time, not the decoder's), in two
processes that take turns, one importing this tree and one a checkout of the baseline commit (two
versions of recon cannot share a process). Prints sentences a second for each (the fastest of the
timed passes), their ratio, and whether both wrote the same tokens: a change meant to be exact must
say "same" on every row.

    python benchmarks/decoding_speed.py --checkpoint checkpoints/default --baseline HEAD~1
    python benchmarks/decoding_speed.py --checkpoint checkpoints/default --baseline 8956022 --sentences 512 --rounds 3
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
    """One round in this process's recon: time each setting, print one JSON line."""
    import torch
    from benchmark import timed, validation_decoding  # benchmarks/benchmark.py
    from recon.device import keep_freed_memory
    keep_freed_memory()  # as train.py and evaluate.py run
    if args.threads:
        torch.set_num_threads(args.threads)
    _, model, _, vectors, settings = validation_decoding(args.checkpoint, args.sentences)
    result = {}
    for name, gen in settings.items():
        timed(lambda: model.decode_rows(vectors, **gen), vectors.device)  # warm-up: pages, the first batch's buffers
        runs = [timed(lambda: model.decode_rows(vectors, **gen), vectors.device) for _ in range(args.repeats)]
        out = runs[-1][0]
        tokens = [[ids for ids, _ in row] for row in out[1]] if gen.get("return_all") else out  # every beam
        result[name] = {"seconds": min(s for _, s in runs), "sentences": len(vectors),
                        "digest": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16]}
    print(json.dumps(result))


def checkout(rev, folder):
    """The baseline's recon/ as committed at `rev`, written under `folder` (git archive: no worktree left)."""
    archive = subprocess.run(["git", "-C", REPO, "archive", rev, "recon"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def run_round(src, args):
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--checkpoint", args.checkpoint,
           "--sentences", str(args.sentences), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=os.getcwd()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/default", help="a checkpoint or run folder")
    p.add_argument("--baseline", default="HEAD", help="the commit to compare against (default: HEAD, for "
                   "uncommitted changes)")
    p.add_argument("--sentences", type=int, default=256, help="the first N of its validation split")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each setting in a round (the fastest "
                   "counts)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each side, taking turns")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {f"baseline {args.baseline}": checkout(args.baseline, tmp), "this tree": REPO}
        rounds = {side: [] for side in sides}
        for r in range(args.rounds):
            for side, src in sides.items():
                rounds[side].append(run_round(src, args))
                times = ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in rounds[side][-1].items())
                print(f"round {r + 1} {side}: {times}", flush=True)
    base, new = (rounds[side] for side in sides)
    print(f"\n{args.checkpoint}: {args.sentences} validation sentences, the fastest of {args.rounds} rounds x "
          f"{args.repeats} passes per side\n")
    print(f"| decoding | baseline {args.baseline}, sentences / s | this tree, sentences / s | ratio | tokens |")
    print("|---|---:|---:|---:|---|")
    for name in base[0]:
        b = min(r[name]["seconds"] for r in base)
        n = min(r[name]["seconds"] for r in new)
        same = len({r[name]["digest"] for r in base + new}) == 1
        print(f"| {name} | {args.sentences / b:.1f} | {args.sentences / n:.1f} | {b / n:.2f}x | "
              f"{'same' if same else 'DIFFERENT'} |")


if __name__ == "__main__":
    main()
