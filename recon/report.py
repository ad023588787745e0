"""The human report: headline table beside its control, a table by length, best and worst rows."""

HEADLINE = (
    ("bleu", "BLEU (corpus)"),
    ("sentence_bleu_mean", "sentence BLEU (mean)"),
    ("exact_match", "exact match %"),
    ("exact_match_normalized", "exact match, normalised %"),
    ("token_f1", "token F1"),
)


def headline_table(metrics):
    lines = ["| metric | reconstruction | control: random vector |", "|---|---:|---:|"]
    for key, label in HEADLINE:
        lines.append(f"| {label} | {metrics[key]:.2f} | {metrics['control_random_' + key]:.2f} |")
    lines.append(f"| examples | {metrics['num_examples']} | {metrics['num_examples']} |")
    return "\n".join(lines)


def length_table(by_length):
    lines = ["| length (encoder tokens) | n | BLEU | exact match % | token F1 | control BLEU | control exact % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in by_length.items():
        lines.append(f"| {name} | {m['num_examples']} | {m['bleu']:.2f} | {m['exact_match']:.2f} | "
                     f"{m['token_f1']:.2f} | {m['control_random_bleu']:.2f} | {m['control_random_exact_match']:.2f} |")
    return "\n".join(lines)


def _examples(rows):
    lines = ["| sentence BLEU | reference | reconstruction |", "|---:|---|---|"]
    esc = lambda s: s.replace("|", "\\|")
    for r in rows:
        lines.append(f"| {r['sentence_bleu']:.1f} | {esc(r['reference'])} | {esc(r['prediction'])} |")
    return "\n".join(lines)


def write_report(path, metrics, rows, title, n_examples=10):
    ranked = sorted(rows, key=lambda r: (r["sentence_bleu"], r["length"]))
    d = metrics["decoding"]
    text = "\n\n".join([
        f"# {title}",
        f"Decoding: {d['strategy']}" + (f", {d['num_beams']} beams, length penalty {d['length_penalty']}"
                                         if d["num_beams"] > 1 else "")
        + f"; at most {d['max_new_tokens']} tokens. BLEU signature: `{metrics['sacrebleu_signature']}`.",
        headline_table(metrics),
        "The control decodes vectors drawn at random with the mean and covariance of the real ones: "
        "what the decoder writes from its language prior alone.",
        "## By length",
        length_table(metrics["by_length"]),
        f"## The {n_examples} best reconstructions",
        _examples(list(reversed(ranked))[:n_examples]),
        f"## The {n_examples} worst reconstructions",
        _examples(ranked[:n_examples]),
    ]) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text
