import pytest
import sacrebleu

from recon.metrics import corpus_scores, example_scores, normalize_loose, repeats_word, token_f1

REFS = ["The cat sat on the mat.", "Paris is the capital of France.", "Café au lait, s'il vous plaît!"]
HYPS = ["The cat sat on a mat.", "Paris is the capital of France.", "cafe au lait sil vous plait"]


def test_bleu_matches_sacrebleu_directly():
    m = corpus_scores(HYPS, REFS)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    sent = [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)]
    assert m["sentence_bleu_mean"] == pytest.approx(sum(sent) / 3)
    assert m["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert m["num_examples"] == 3


def test_exact_match_raw_and_normalised():
    m = corpus_scores(HYPS, REFS)
    assert m["exact_match"] == pytest.approx(100 / 3)  # only the second is equal as a string
    # the third matches once case, accents and punctuation are gone
    assert m["exact_match_normalized"] == pytest.approx(200 / 3)
    assert example_scores("a  b\n", "a b")["exact_match"] == 100.0
    assert example_scores("A b", "a b")["exact_match"] == 0.0
    assert normalize_loose("Café, s'il-vous plaît!") == "cafe silvous plait"


def test_token_f1_known_values():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("dog", "the cat sat") == 0.0
    # 2 of 4 predicted words are right (precision 1/2), 2 of 3 reference words found (recall 2/3)
    assert token_f1("the cat ran away", "The cat sat.") == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert token_f1("the the", "the") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset, not set
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="2 predictions for 3"):
        corpus_scores(HYPS[:2], REFS)


def test_repeated_word_counts_long_words_loosely_and_not_numbers_or_short_words():
    assert repeats_word("Traditional Chinese music, including Chinese, and Chinese songs.")
    assert repeats_word("Paris is big; PARIS is old")  # compared as the metrics compare words
    assert not repeats_word("The cat and the dog and the bird")  # short words repeat in any sentence
    assert not repeats_word("Between 1898 and 1900, from 1898 on")  # numbers are not words it counts
    assert repeats_word("Café culture, cafe society", min_letters=4)
    m = corpus_scores(["Chinese music of Chinese", "Chinese music"], ["a", "b"])
    assert m["repeated_word"] == 50.0 and example_scores("x", "x")["repeated_word"] == 0.0
