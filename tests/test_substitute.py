"""recon/substitute.py and --substitute-copies: copies of training texts swap words for words seen
between the same neighbours, and join the training split alone."""

import pytest

from recon.data import DataConfig, build_corpus, describe, split_of
from recon.substitute import Substituter, form

TEXTS = [
    "The red cat sat on the mat in 1990 and slept.",
    "The big cat sat on the rug in 1854 and slept.",
    "Paris is the capital of France.",
    "Oslo is the capital of Norway.",
]


def count_words(texts):
    return [len(t.split()) for t in texts]


def test_one_word_swaps_for_a_word_of_its_form_seen_between_the_same_neighbours():
    sub = Substituter(TEXTS, rate=0.0, n_common=3)
    assert "the" in sub.common and all("the" not in ws for ws in sub.between.values())
    # "Paris" is the one word that can move ("capital" has no other word between "the" and "of";
    # "France." carries its full stop, and words with punctuation attached stay); rate 0 swaps one
    assert {sub.copy(2) for _ in range(30)} == {"Oslo is the capital of France."}


def test_digits_swap_for_digits_lower_case_for_lower_case():
    sub = Substituter(TEXTS, rate=0.5, n_common=3, seed=1)
    copies = {sub.copy(0) for _ in range(40)}
    assert any(" 1854 " in c for c in copies) and any("The big cat" in c for c in copies)
    for c in copies:
        assert c != TEXTS[0]
        for new, old in zip(c.split(), TEXTS[0].split()):
            assert new == old or form(new) == form(old)
    only_digits = Substituter(TEXTS, rate=1.0, forms=("digit",), n_common=3)
    assert {only_digits.copy(0) for _ in range(10)} == {TEXTS[0].replace("1990", "1854")}


def test_a_text_without_candidates_gives_no_copy():
    sub = Substituter(["Zebras graze quietly."] + TEXTS, rate=1.0, n_common=0)
    assert sub.copy(0) == "Zebras graze quietly."
    assert "Zebras graze quietly." not in sub.copies(2) and len(set(sub.copies(2))) == len(sub.copies(2))


def test_copies_join_the_training_split_alone_and_keep_the_held_out_splits(text_file):
    texts = [f"The {c} {a} lived in {p} until {1800 + i} and then moved away." for i, (c, a, p) in enumerate(
        (c, a, p) for c in ("red", "big", "old", "small") for a in ("cat", "dog", "fox", "owl", "bee")
        for p in ("Paris", "Oslo", "Rome", "Lima", "Kyiv", "Quito"))]
    base = build_corpus(text_file(texts), count_words, max_length=12, validation_fraction=0.1, test_fraction=0.2)
    c = build_corpus(text_file(texts, "same.txt"), count_words, max_length=12, validation_fraction=0.1,
                     test_fraction=0.2, substitute_copies=2)
    n = c.stats["training_substitute_copies"]
    assert n > 0 and c.texts("validation") == base.texts("validation") and c.texts("test") == base.texts("test")
    copies = c.texts("train")[len(base.texts("train")):]
    assert c.texts("train")[:len(base.texts("train"))] == base.texts("train") and len(copies) == n
    assert c.texts("train", copies=False) == base.texts("train")  # what the probes read
    assert c.texts("all", copies=False) == base.texts("all")
    assert all(split_of(x, 0.1, 0.2) == "train" for x in copies) and not set(copies) & set(texts)
    held_out = base.texts("validation") + base.texts("test")
    # substitutes come from the training texts: a year seen only in a held-out text is never written
    only_held_out = {w for t in held_out for w in t.split()} - {w for t in base.texts("train") for w in t.split()}
    assert only_held_out and not only_held_out & {w for x in copies for w in x.split()}
    assert f"training holds {n} copies with words swapped" in describe(c.stats)


def test_flags_are_checked_and_new_data_gets_no_copies():
    with pytest.raises(Exception, match="--substitute-forms takes upper, lower, digit"):
        DataConfig(substitute_forms="upper,nouns")
    with pytest.raises(Exception, match="--substitute-rate"):
        DataConfig(substitute_rate=1.5)
    cfg, same = DataConfig.from_meta({"data": "x.txt", "substitute_copies": 1}, data="other.txt")
    assert not same and cfg.substitute_copies == 0
    # a run recorded before the flag trained on no copies, and its corpus is rebuilt so
    cfg, same = DataConfig.from_meta({"data": "x.txt"})
    assert same and cfg.substitute_copies == 0 and DataConfig().substitute_copies == 1


def test_a_run_trains_on_its_copies_and_its_corrector_on_the_sentences_alone(tiny_encoder_dir, tmp_path):
    import json

    import train as train_script
    data = tmp_path / "data.txt"
    # over 100 distinct words, so that some (the years) are outside the commonest and may be swapped
    data.write_text("\n".join(f"The {c} {a} lived in {p} until {1800 + 3 * i} and then moved away." for i, (c, a, p) in
                              enumerate((c, a, p) for c in ("red", "big", "old") for a in ("cat", "dog", "fox", "owl")
                                        for p in ("Paris", "Oslo", "Rome", "Lima", "Kyiv", "Quito", "Accra", "Hanoi", "Perth", "Dakar"))) + "\n")
    common = ["--cache-dir", "", "--eval-steps", "1000", "--no-eval", "--batch-size", "8"]
    base = ["--data", str(data), "--output-dir", str(tmp_path / "base"), "--encoder", tiny_encoder_dir, "--d-model", "32",
            "--n-layer", "1", "--n-head", "2", "--vocab-size", "200", "--decoder-tokenizer", "encoder", "--max-steps", "4",
            "--validation-fraction", "0", "--test-fraction", "0", *common]
    assert train_script.main(base) == 0
    stats = json.loads((tmp_path / "base" / "data.json").read_text())
    assert stats["training_substitute_copies"] > 0 and stats["train_texts"] == 120 + stats["training_substitute_copies"]
    corrector = ["--base-model", str(tmp_path / "base"), "--output-dir", str(tmp_path / "corr"), "--max-steps", "2",
                 "--hypotheses", "0", "--hypothesis-noise", "0", *common]
    assert train_script.main(corrector) == 0
    assert json.loads((tmp_path / "corr" / "data.json").read_text())["hypothesis_texts"] == 120


def test_a_run_recorded_before_the_flag_resumes_only_without_copies():
    from dataclasses import asdict

    from recon.config import TrainConfig
    recorded = {k: v for k, v in asdict(TrainConfig()).items() if k != "substitute_copies"}
    assert TrainConfig().changed_from(recorded) == ["substitute_copies"]  # it trained on none
    assert TrainConfig(substitute_copies=0).changed_from(recorded) == []
