"""The human report: headline table beside its controls, a table by length, plots, best and
worst rows; and the probes' report."""

import json
import os

HEADLINE = (
    ("bleu", "BLEU (corpus)"),
    ("sentence_bleu_mean", "sentence BLEU (mean)"),
    ("exact_match", "exact match %"),
    ("exact_match_normalized", "exact match, normalised %"),
    ("token_f1", "token F1"),
    ("repeated_3gram", "outputs with a repeated word 3-gram %"),
    ("repeated_word", "outputs repeating a word of 5+ letters %"),
    ("broken_text", "outputs with U+FFFD or ⁇ %"),
)
CONTROL_LABELS = {"random": "random vector", "shuffled": "another sentence's vector",
                  "retrieval": "nearest training sentence"}


def controls_in(metrics):
    return [c for c in CONTROL_LABELS if f"control_{c}_bleu" in metrics]


def headline_table(metrics):
    controls = controls_in(metrics)
    lines = ["| metric | reconstruction | " + " | ".join(f"control: {CONTROL_LABELS[c]}" for c in controls) + " |",
             "|---|---:|" + "---:|" * len(controls)]
    for key, label in HEADLINE:
        if key not in metrics:  # written before this metric existed
            continue
        cells = [f"{metrics[f'control_{c}_{key}']:.2f}" for c in controls]
        lines.append(f"| {label} | {metrics[key]:.2f} | " + " | ".join(cells) + " |")
    for key, label in (("reference_repeated_3gram", "references with a repeated word 3-gram %"),
                       ("reference_repeated_word", "references repeating a word of 5+ letters %"),
                       ("reference_unreachable_no_repeat", "references the no-repeat ban makes unreachable %")):
        if key in metrics:
            lines.append(f"| {label} | {metrics[key]:.2f} | " + " | ".join("" for _ in controls) + " |")
    for key, label in (("cosine", "cosine(target, re-encoded output)"),
                       ("cosine_standardized", "the same, standardised vectors")):
        if key in metrics:
            lines.append(f"| {label} | {metrics[key]:.3f} | " + " | ".join("" for _ in controls) + " |")
    lines.append(f"| examples | {metrics['num_examples']} | " + " | ".join(str(metrics["num_examples"]) for _ in controls) + " |")
    return "\n".join(lines)


def uncertainty_text(metrics):
    """Where the metrics hold them (evaluations since the bootstrap): the reconstruction's 95%
    intervals and its paired tests against the controls, as a paragraph; "" otherwise."""
    if "intervals" not in metrics:
        return ""
    from recon.significance import LABELS, figure, paired_line
    b, n = metrics["bootstrap"], metrics["num_examples"]
    text = (f"95% intervals over {b['samples']:,} resamples of the {n:,} evaluated sentences (the same weights on "
            "another draw of such sentences; another training seed moves a figure too): " + ", ".join(
                f"{LABELS[k]} {figure(k, lo)} to {figure(k, hi)}" for k, (lo, hi) in metrics["intervals"].items() if k in LABELS) + ".")
    versus = metrics.get("versus_controls", {})
    if versus:
        text += " The reconstruction minus each control, paired on the same resamples: " + "; ".join(
            paired_line(CONTROL_LABELS[c], t) for c, t in versus.items()) + "."
    return text


def uncertainty_lines(metrics, width=110):
    """uncertainty_text wrapped for a terminal or a log file."""
    import textwrap
    return "\n".join(textwrap.wrap(uncertainty_text(metrics), width))


def length_table(by_length, controls):
    head = "| length (encoder tokens) | n | BLEU | exact match % | token F1 | cosine (standardised) | " + \
        " | ".join(f"BLEU: {CONTROL_LABELS[c]}" for c in controls) + " |"
    lines = [head, "|---|---:|---:|---:|---:|---:|" + "---:|" * len(controls)]
    for name, m in by_length.items():
        cells = [f"{m[f'control_{c}_bleu']:.2f}" for c in controls]
        lines.append(f"| {name} | {m['num_examples']} | {m['bleu']:.2f} | {m['exact_match']:.2f} | "
                     f"{m['token_f1']:.2f} | {m['cosine_standardized']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _examples(rows):
    lines = ["| sentence BLEU | reference | reconstruction |", "|---:|---|---|"]
    esc = lambda s: s.replace("|", "\\|")
    for r in rows:
        lines.append(f"| {r['sentence_bleu']:.1f} | {esc(r['reference'])} | {esc(r['prediction'])} |")
    return "\n".join(lines)


def plot_length_curves(path, metrics):
    """BLEU and exact match by length bucket, reconstruction and controls; cosine by length."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = list(metrics["by_length"])
    rows = [metrics["by_length"][b] for b in buckets]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in ((axes[0], "bleu", "corpus BLEU"), (axes[1], "exact_match", "exact match %")):
        ax.plot(buckets, [r[key] for r in rows], "o-", label="reconstruction")
        for c in controls_in(metrics):
            ax.plot(buckets, [r[f"control_{c}_{key}"] for r in rows], "o--", label=CONTROL_LABELS[c])
        ax.set_xlabel("length (encoder tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].plot(buckets, [r["cosine_standardized"] for r in rows], "o-")
    axes[2].set_xlabel("length (encoder tokens)")
    axes[2].set_ylabel("cosine(target, re-encoded), standardised")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(output_dir, metrics, rows, title, n_examples=10):
    """Write report.md and length_curves.png into output_dir; return the Markdown."""
    ranked = sorted(rows, key=lambda r: (r["sentence_bleu"], r["length"]))
    d = metrics["decoding"]
    decoding = f"Decoding: {d['strategy']}"
    if d["num_beams"] > 1:
        decoding += f", {d['num_beams']} beams, length penalty {d['length_penalty']}"
        if d.get("rerank") == "embedding":
            decoding += ", the beam whose re-encoded vector is closest to the target kept"
    if d.get("no_repeat_ngram"):
        decoding += f", no {d['no_repeat_ngram']}-gram of decoder tokens written twice" + (
            " (compared loosely: case, accents and punctuation ignored)" if d.get("no_repeat_match") == "loose" else "")
    if d.get("feedback_steps"):
        decoding += (f", then {d['feedback_steps']} steps of vector feedback on the base (rate {d['feedback_rate']:g}, "
                     f"{d.get('feedback_beam', d.get('correction_beam', 1))} beams) and {d['correction_steps']} "
                     "correction steps of the closest candidates it kept (sequence beam "
                     f"{d.get('correction_beam', 1)})")
    elif d.get("correction_steps") and "feedback_rate" in d:
        decoding += (f", then {d['correction_steps']} steps of vector feedback (the decoded vector moved by "
                     f"{d['feedback_rate']:g} of the residual of the re-encoded output, {d.get('correction_beam', 1)} "
                     "beam(s) a step, the candidate closest to the target kept)")
    elif d.get("correction_steps"):
        decoding += f", then {d['correction_steps']} correction steps (sequence beam {d.get('correction_beam', 1)})"
    if d.get("correction_rate"):
        decoding += f", the corrector's target slot moved by {d['correction_rate']:g} of the residual a step"
    if d.get("companions"):
        decoding += (f"; the vector feedback pooled with that of {len(d['companions'])} other decoder(s) of the same "
                     f"vectors ({', '.join(d['companions'])}), the closest candidate of all written")
    decoding += f"; at most {d['max_new_tokens']} tokens. BLEU signature: `{metrics['sacrebleu_signature']}`."
    notes = []
    if "beam_without_rerank_bleu" in metrics:
        notes.append(f"Plain beam search (no rerank) scores BLEU {metrics['beam_without_rerank_bleu']:.2f}, exact match "
                     f"{metrics['beam_without_rerank_exact_match']:.2f}%, standardised cosine "
                     f"{metrics['beam_without_rerank_cosine_standardized']:.3f}; "
                     f"the embedding rerank changes these by {metrics['bleu'] - metrics['beam_without_rerank_bleu']:+.2f} BLEU and "
                     f"{metrics['exact_match'] - metrics['beam_without_rerank_exact_match']:+.2f} exact match points.")
    if "overlap_texts_in_train" in metrics:
        notes.append(f"Overlap with training: {metrics['overlap_texts_in_train']} evaluated texts also occur among the "
                     f"{metrics['retrieval_pool_size']} training texts (0 for a held-out split); on average "
                     f"{metrics['overlap_ngram_nearest_train']:.1f}% of a text's word bigrams occur in its nearest "
                     "training text.")
    plot = os.path.join(output_dir, "length_curves.png")
    plot_length_curves(plot, metrics)
    text = "\n\n".join([
        f"# {title}",
        decoding,
        headline_table(metrics),
        *filter(None, [uncertainty_text(metrics)]),  # "" for metrics written before the bootstrap
        "Controls: *random vector* decodes Gaussian vectors with the mean and covariance of the real ones "
        "(the decoder's language prior alone); *another sentence's vector* decodes each text from a different "
        "evaluated text's vector; *nearest training sentence* is the training text whose vector is closest by "
        "cosine (what memorising the training set would score). Cosine compares the target vector with the "
        "vector of the re-encoded reconstruction; the standardised cosine does so after subtracting the training "
        "vectors' mean and dividing by their standard deviation per dimension (the decoder's own input "
        "transformation), which retrieval and rerank use too: raw cosines between [CLS] states are often all "
        "close to 1.",
        *notes,
        "## By length",
        length_table(metrics["by_length"], controls_in(metrics)),
        "![metrics by length](length_curves.png)",
        f"## The {n_examples} best reconstructions",
        _examples(list(reversed(ranked))[:n_examples]),
        f"## The {n_examples} worst reconstructions",
        _examples(ranked[:n_examples]),
    ]) + "\n"
    with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


PROBE_ROWS = (("sentlen", "accuracy", "SentLen: length bin, accuracy %"),
              ("wc", "accuracy", "WC: which mid-frequency word, accuracy %"),
              ("bshift", "accuracy", "BShift: adjacent words swapped?, accuracy %"),
              ("bow", "recall_all", "bag of words: recall at \\|s\\| %, all words"),
              ("bow", "recall_content", "bag of words: recall at \\|s\\| %, content words"))


def probe_table(results):
    lines = ["| task | linear probe | hidden-layer probe | control: random vector (linear / hidden) | majority | test examples |",
             "|---|---:|---:|---:|---:|---:|"]
    for task, key, label in PROBE_ROWS:
        r = results["tasks"].get(task)
        if r and "skipped" not in r:
            lines.append(f"| {label} | {r['linear'][key]:.1f} | {r['mlp'][key]:.1f} | {r['random_linear'][key]:.1f} / "
                         f"{r['random_mlp'][key]:.1f} | {r['majority'][key]:.1f} | {r['examples']['test']} |")
    return "\n".join(lines)


def decoding_label(d):
    """A short name for the decoding settings an evaluation recorded (metrics.json's "decoding")."""
    label = f"{d['num_beams']} beams" if d["num_beams"] > 1 else "greedy"
    if d.get("rerank") == "embedding":
        label += ", embedding rerank"
    label += f", {d['no_repeat_ngram']}-gram ban" if d.get("no_repeat_ngram") else ", no ban"
    if d.get("feedback_steps"):
        label += (f", then {d['feedback_steps']} vector-feedback steps on the base (rate {d['feedback_rate']:g}, "
                  f"beam {d.get('feedback_beam', d.get('correction_beam', 1))}) and "
                  f"{d['correction_steps']} correction steps (sequence beam {d.get('correction_beam', 1)})")
    elif d.get("correction_steps") and "feedback_rate" in d:
        label += f", then {d['correction_steps']} vector-feedback steps (rate {d['feedback_rate']:g}" + (
            f", beam {d['correction_beam']})" if d.get("correction_beam", 1) > 1 else ")")
    elif d.get("correction_steps"):
        label += f", then {d['correction_steps']} correction steps" + (
            f" (sequence beam {d['correction_beam']})" if d.get("correction_beam", 1) > 1 else "")
    if d.get("companions"):
        label += f", feedback pooled over {len(d['companions']) + 1} decoders"
    if d.get("correction_rate"):
        label += f", target slot moved at {d['correction_rate']:g}"
    return label


def decoder_probe_table(decodings):
    """One row per decoding (run_probes' results["decodings"]) beside the same probe."""
    lines = ["| decoding | content words of the test sentences (in the probe's vocabulary) | decoder writes "
             "| probe recovers at \\|s\\| | decoder / probe | of the probe's words, the decoder writes |",
             "|---|---:|---:|---:|---:|---:|"]
    for d in decodings:
        lines.append(f"| {d.get('decoding', 'greedy, no ban')} | {d['content_words']} | {d['decoder_content_recall']:.1f}% | "
                     f"{d['probe_content_recall']:.1f}% | {d['decoder_over_probe']:.2f} | "
                     f"{d['probe_words_the_decoder_writes']:.1f}% |")
    return "\n".join(lines)


def plot_probes(path, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label.split(":")[0] + (" (content)" if key == "recall_content" else ""), results["tasks"][t], key)
            for t, key, label in PROBE_ROWS if "mlp" in results["tasks"].get(t, {})]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 3.8))
    width = 0.2
    for i, (col, name) in enumerate((("linear", "linear"), ("mlp", "hidden layer"), ("random_mlp", "random vector"),
                                     ("majority", "majority"))):
        ax.bar([j + (i - 1.5) * width for j in range(len(rows))], [r[col][k] for _, r, k in rows], width, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([n for n, _, _ in rows], fontsize=8)
    ax.set_ylabel("test accuracy / recall %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_probe_report(output_dir, results, title):
    """probes.json, probes.md and probes.png in output_dir; returns the Markdown."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "probes.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot_probes(os.path.join(output_dir, "probes.png"), results)
    parts = [f"# {title}", probe_table(results), "![probes](probes.png)",
             "Each probe is trained on the training split's vectors (the epoch with the best validation score "
             "kept) and scored on the test split; the control trains and scores the same probe on Gaussian "
             "vectors with the real ones' mean and covariance; majority is the best score without a vector."]
    if "decoder_vs_probe" in results:
        parts += ["## Decoder beside probe", decoder_probe_table(results.get("decodings", [results["decoder_vs_probe"]])),
                  "Content words: the test sentence's distinct words in the probe's vocabulary, outside its "
                  f"{results['settings']['stop']} commonest. The decoder writes one when its reconstruction (decoded "
                  "as the row says) holds it; the hidden-layer bag-of-words probe recovers one when it is among its "
                  "top |s| content words for that vector."]
    text = "\n\n".join(parts) + "\n"
    with open(os.path.join(output_dir, "probes.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text
