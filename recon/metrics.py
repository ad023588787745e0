"""Reconstruction metrics. Each is defined here and, in the same words, in the README.

bleu                    corpus BLEU (0-100), sacrebleu's corpus_score with its default 13a
                        tokenizer, cased; its signature is reported beside it.
sentence_bleu_mean      mean over examples of sacrebleu's sentence BLEU (effective order), 0-100;
                        the headline number of vec2text, labelled as what it is.
exact_match             percent of predictions equal to the reference as strings, after
                        whitespace normalisation only.
exact_match_normalized  percent equal after lowercasing, stripping accents and punctuation
                        and collapsing whitespace: equality as an uncased encoder sees text.
token_f1                mean over examples of the F1 of the multiset of words (normalised as
                        above) of prediction vs reference, 0-100 (SQuAD's token F1).
repeated_3gram          percent of outputs in which a word 3-gram (normalised as above) occurs
                        twice: loops; the references' own share is reported beside it.
repeated_word           percent of outputs in which a word of five letters or more (normalised as
                        above, numbers aside) occurs twice: the word-level repeats a 3-gram ban lets
                        through ("Chinese, Chinese, and Chinese"); the references' share beside it.
broken_text             percent of outputs holding U+FFFD (half a character) or U+2047 (⁇,
                        SentencePiece's unknown-piece mark).
"""

import re
import unicodedata
from collections import Counter

from sacrebleu.metrics import BLEU

from recon.data import normalize_whitespace

_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_loose(text):
    """Lowercase, strip accents and punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return normalize_whitespace(_PUNCT.sub("", text))  # deleted, as SQuAD does: "s'il" -> "sil"


def token_f1(prediction, reference):
    p, r = normalize_loose(prediction).split(), normalize_loose(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def ngram_overlap(text, other, n=2):
    """Share of `text`'s word n-grams (normalised as above) that also occur in `other`, 0-1."""
    a, b = normalize_loose(text).split(), normalize_loose(other).split()
    n = min(n, len(a)) or 1
    grams = [tuple(a[i:i + n]) for i in range(len(a) - n + 1)]
    if not grams:
        return 0.0
    have = {tuple(b[i:i + n]) for i in range(len(b) - n + 1)}
    return sum(g in have for g in grams) / len(grams)


def repeats_ngram(text, n=3):
    """Whether a word n-gram (words normalised as above) occurs twice in the text."""
    w = normalize_loose(text).split()
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) < len(grams)


def repeats_word(text, min_letters=5):
    """Whether a word of at least min_letters characters (normalised as above, not a number) occurs twice."""
    w = [x for x in normalize_loose(text).split() if len(x) >= min_letters and not x.isdigit()]
    return len(set(w)) < len(w)


def broken(text):
    """Whether the text holds U+FFFD (half a character) or SentencePiece's unknown-piece mark."""
    return "\ufffd" in text or "\u2047" in text


def example_scores(prediction, reference, _bleu=BLEU(effective_order=True)):
    """Per-example scores, each 0-100."""
    return {
        "sentence_bleu": _bleu.sentence_score(prediction, [reference]).score,
        "exact_match": 100.0 * (normalize_whitespace(prediction) == normalize_whitespace(reference)),
        "exact_match_normalized": 100.0 * (normalize_loose(prediction) == normalize_loose(reference)),
        "token_f1": 100.0 * token_f1(prediction, reference),
        "repeated_3gram": 100.0 * repeats_ngram(prediction),
        "repeated_word": 100.0 * repeats_word(prediction),
        "broken_text": 100.0 * broken(prediction),
    }


def corpus_scores(predictions, references, per_example=None):
    """Aggregate metrics over a list of predictions. per_example: precomputed example_scores."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return {"num_examples": 0}
    if per_example is None:
        per_example = [example_scores(p, r) for p, r in zip(predictions, references)]
    bleu = BLEU()
    score = bleu.corpus_score(predictions, [references])
    n = len(references)
    return {
        "bleu": score.score,
        "sentence_bleu_mean": sum(s["sentence_bleu"] for s in per_example) / n,
        "exact_match": sum(s["exact_match"] for s in per_example) / n,
        "exact_match_normalized": sum(s["exact_match_normalized"] for s in per_example) / n,
        "token_f1": sum(s["token_f1"] for s in per_example) / n,
        "repeated_3gram": sum(s["repeated_3gram"] for s in per_example) / n,
        "repeated_word": sum(s["repeated_word"] for s in per_example) / n,
        "broken_text": sum(s["broken_text"] for s in per_example) / n,
        "num_examples": n,
        "sacrebleu_signature": str(bleu.get_signature()),
    }
