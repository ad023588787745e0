"""Run a grid of training runs and compare them: python -m recon.sweep CONFIG.yaml

The config (YAML or JSON):
  output_dir: checkpoints/sweeps/NAME   # one run folder per combination inside it
  base: {flag: value, ...}              # TrainConfig fields every run shares
  grids:                                # each grid expands to every combination of its lists
    - {representation: [cls, mean], layer: [2, 4, 6], seed: [0, 1]}
    - {encoder: [scratch], cls_init: [learned, random-per-forward, zeros]}
  probes: true                          # optional: the probes on each run's vectors, beside its decoder
A run whose evaluation already exists is skipped; an interrupted one is resumed from its newest
checkpoint. At the end: results.csv, results.md and plots (metric vs layer, one line per
representation; BLEU per run beside its controls) in output_dir.
"""

import argparse
import csv
import itertools
import json
import os
import sys

import yaml

from recon.checkpoint import list_checkpoints
from recon.config import ConfigError, TrainConfig
from recon.device import keep_freed_memory
from recon.errors import ReconError

COLUMNS = ("bleu", "exact_match", "token_f1", "cosine", "cosine_standardized", "control_random_bleu", "control_shuffled_bleu",
           "control_retrieval_bleu", "num_examples")


def load_sweep(path):
    with open(path) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict) or "output_dir" not in spec:
        raise ConfigError(f"{path}: a sweep needs at least output_dir (and base, grids)")
    unknown = set(spec) - {"output_dir", "base", "grids", "probes"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a sweep has output_dir, base, grids and probes")
    return spec


def expand(spec):
    """[(run name, overrides)] for every combination of every grid, in order, without repeats."""
    runs = {}
    for grid in spec.get("grids") or [{}]:
        keys = list(grid)
        for values in itertools.product(*(v if isinstance(v, list) else [v] for v in grid.values())):
            overrides = dict(zip(keys, values))
            name = "_".join(f"{k}={v}" for k, v in overrides.items()).replace("/", "-").replace(":", "") or "base"
            runs.setdefault(name, overrides)
    return list(runs.items())


def run_config(spec, name, overrides):
    fields = {**(spec.get("base") or {}), **overrides}
    unknown = set(fields) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown training fields {sorted(unknown)}")
    fields["output_dir"] = os.path.join(spec["output_dir"], name)
    folder = fields["output_dir"]
    if list_checkpoints(folder):
        fields["resume"] = "auto"
    elif os.path.exists(folder):
        fields["overwrite"] = True  # a run that died before its first checkpoint: start it again
    return TrainConfig(**fields)


def evaluation_file(folder, split="test"):
    return os.path.join(folder, f"eval-{split}", "metrics.json")


def finished(folder, split="test"):
    return os.path.isfile(evaluation_file(folder, split))


def eval_split(spec):
    """The split every run of the sweep is evaluated on (its base's --eval-split; test by default)."""
    return (spec.get("base") or {}).get("eval_split", "test")


def run_sweep(spec, train_fn=None, log=print):
    """Run every combination that has not finished; return the result rows."""
    if train_fn is None:
        from recon.training import train as train_fn
    os.makedirs(spec["output_dir"], exist_ok=True)
    rows, split = [], eval_split(spec)
    for name, overrides in expand(spec):
        folder = os.path.join(spec["output_dir"], name)
        if finished(folder, split):
            log(f"[sweep] {name}: finished before, skipped")
        else:
            log(f"[sweep] {name}: training")
            try:
                train_fn(run_config(spec, name, overrides))
            except ReconError as e:  # an impossible combination (pooler at layer 2, ...): say so, go on
                log(f"[sweep] {name}: not run: {e}")
                continue
        with open(evaluation_file(folder, split)) as f:
            m = json.load(f)
        rows.append({"run": name, **overrides, **{c: m.get(c) for c in COLUMNS},
                     **(probe_columns(folder, log) if spec.get("probes") else {})})
    write_results(spec["output_dir"], rows, split)
    return rows


PROBE_COLUMNS = (("sentlen", "mlp", "accuracy", "probe_sentlen"), ("wc", "mlp", "accuracy", "probe_wc"),
                 ("bshift", "mlp", "accuracy", "probe_bshift"), ("bow", "mlp", "recall_content", "probe_bow_content"),
                 ("bow", "random_mlp", "recall_content", "probe_bow_content_random"))


def probe_columns(folder, log):
    """The hidden-layer probes' test scores on a run's vectors (computed once, kept in folder/probes/),
    and the decoder's content-word recall over the probe's."""
    path = os.path.join(folder, "probes", "probes.json")
    if not os.path.isfile(path):
        from recon.cache import DEFAULT_CACHE_DIR
        from recon.checkpoint import resolve_checkpoint
        from recon.config import ProbeSettings
        from recon.model import ReconModel
        from recon.probes import probe_checkpoint
        checkpoint = resolve_checkpoint(folder)
        probe_checkpoint(checkpoint, ReconModel.from_pretrained(checkpoint), ProbeSettings(),
                         os.path.dirname(path), DEFAULT_CACHE_DIR, log=log)
    with open(path) as f:
        r = json.load(f)
    cols = {name: r["tasks"][t][which][key] for t, which, key, name in PROBE_COLUMNS if "mlp" in r["tasks"].get(t, {})}
    if "decoder_vs_probe" in r:
        cols["decoder_over_probe"] = r["decoder_vs_probe"]["decoder_over_probe"]
    return cols


def _fmt(v):
    return f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))


def write_results(out, rows, split="test"):
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot_results(out, rows, split)


def plot_results(out, rows, split="test"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layered = [r for r in rows if "layer" in r]
    if layered:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, metric in zip(axes, ("bleu", "token_f1")):
            for rep in dict.fromkeys(r.get("representation", "cls") for r in layered):
                pts = {}
                for r in layered:
                    if r.get("representation", "cls") == rep and r[metric] is not None:
                        pts.setdefault(r["layer"], []).append(r[metric])  # seeds averaged
                xs = sorted(pts)
                ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], "o-", label=rep)
            ax.set_xlabel("encoder layer (0 = embeddings, -1 = last)")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "by_layer.png"), dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 4))
    x = range(len(rows))
    width = 0.2
    for i, (key, label) in enumerate((("bleu", "reconstruction"), ("control_random_bleu", "random vector"),
                                      ("control_shuffled_bleu", "another sentence's vector"),
                                      ("control_retrieval_bleu", "nearest training sentence"))):
        ax.bar([j + (i - 1.5) * width for j in x], [r.get(key) or 0 for r in rows], width, label=label)
    ax.set_xticks(list(x))
    ax.set_xticklabels([r["run"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"corpus BLEU ({split} split)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "runs.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a grid of recon training runs and compare them.")
    parser.add_argument("config", help="a sweep YAML/JSON file (see recon/sweep.py)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    args = parser.parse_args(argv)
    keep_freed_memory()
    try:
        spec = load_sweep(args.config)
        if args.dry_run:
            for name, overrides in expand(spec):
                state = "finished" if finished(os.path.join(spec["output_dir"], name), eval_split(spec)) else "to run"
                print(f"{name}: {state}")
            return 0
        rows = run_sweep(spec)
    except ReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{len(rows)} runs; table in {spec['output_dir']}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
