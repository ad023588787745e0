import json

import pytest

from recon.data import DataConfig, DataError, build_corpus, clause_pieces, load_raw_texts, normalize_whitespace, split_of, split_sentences


def count_words(texts):
    return [len(t.split()) for t in texts]


def test_sentence_split_keeps_abbreviations_and_initials():
    text = ("Dr. Smith moved to the U.S. Army in 1990. He met J. S. Bach's heirs there! "
            "Was it worth it? \"Yes,\" he said. (It was.) The end")
    assert split_sentences(text) == [
        "Dr. Smith moved to the U.S. Army in 1990.",
        "He met J. S. Bach's heirs there!",
        "Was it worth it?",
        "\"Yes,\" he said.",
        "(It was.)",
        "The end",
    ]


def test_whitespace_normalisation():
    assert normalize_whitespace("  a\tb\u00a0 c\n\nd ") == "a b c d"


def test_split_is_a_function_of_the_text_alone():
    texts = [f"sentence number {i}." for i in range(2000)]
    splits = [split_of(t, 0.1, 0.2) for t in texts]
    assert splits == [split_of(t, 0.1, 0.2) for t in reversed(texts)][::-1]
    frac = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert abs(frac["test"] - 0.2) < 0.04 and abs(frac["validation"] - 0.1) < 0.04
    assert split_of(texts[0], 0.1, 0.2, seed=0) == split_of(texts[0], 0.1, 0.2, seed=0)
    assert [split_of(t, 0.1, 0.2, seed=1) for t in texts] != splits


def test_corpus_dedups_filters_and_never_overlaps(text_file):
    lines = [f"text number {i} is here" for i in range(300)]
    lines += lines[:50]  # duplicates
    lines += ["", "   ", "one two three four five six seven eight nine ten eleven"]  # blanks, one too long
    path = text_file(lines)
    c = build_corpus(path, count_words, max_length=10, validation_fraction=0.1, test_fraction=0.2)
    s = c.stats
    assert s["dropped_duplicate"] == 50 and s["dropped_too_long"] == 1 and s["dropped_blank"] == 2
    train, val, test = (set(c.texts(x)) for x in ("train", "validation", "test"))
    assert not (train & test) and not (train & val) and not (val & test)
    assert len(train) + len(val) + len(test) == 300
    assert s["train_texts"] == len(train) and len(c.texts("all")) == 300
    # the same corpus with more text around it puts every shared sentence in the same split
    c2 = build_corpus(text_file(lines + [f"another text {i}" for i in range(100)], "more.txt"), count_words,
                      max_length=10, validation_fraction=0.1, test_fraction=0.2)
    assert test <= set(c2.texts("test")) and train <= set(c2.texts("train"))


def test_too_long_truncate_keeps_and_counts(text_file):
    path = text_file(["short text", "a much longer text than the limit allows here"])
    c = build_corpus(path, count_words, max_length=3, too_long="keep", validation_fraction=0, test_fraction=0)
    assert c.stats["truncated_too_long"] == 1 and len(c.texts("train")) == 2


def test_clause_pieces_join_neighbours_while_they_fit():
    text = "In 1990, the band, which had formed in Leeds, released its first album (a live one) - to acclaim."
    assert clause_pieces(text, count_words, 8) == [  # "- to acclaim." is under 4 words
        "In 1990, the band,", "which had formed in Leeds,", "released its first album (a live one)"]
    # a clause longer than the limit stays whole (the corpus drops it); short pieces are dropped
    assert clause_pieces("one two three four five six, seven", count_words, 3) == ["one two three four five six,"]


def test_too_long_pieces_train_on_long_training_texts_alone(text_file):
    long = [f"sentence {i} starts here, then goes on for a while, and ends {i} somewhere else." for i in range(400)]
    short = [f"short text number {i} here" for i in range(200)]
    c = build_corpus(text_file(long + short), count_words, max_length=8, too_long="pieces",
                     validation_fraction=0.1, test_fraction=0.2)
    s = c.stats
    assert s["dropped_too_long"] == 400 and s["training_pieces_of_too_long"] > 0
    train, val, test = (set(c.texts(x)) for x in ("train", "validation", "test"))
    assert len(val) + len(test) + len(train) - s["training_pieces_of_too_long"] == 200  # held out: short texts only
    assert not (train & test) and not (train & val) and not (val & test)
    pieces = train - set(short)
    assert len(pieces) == s["training_pieces_of_too_long"] and all(c.lengths[p] <= 8 for p in pieces)
    # only long texts of the training split give pieces: no piece comes from a held-out sentence
    numbered = [p for p in pieces if "then goes on" not in p]  # "sentence I starts here," / "and ends I somewhere else."
    assert numbered and all(split_of(long[int(p.split()[1 if p.startswith("sentence") else 2])], 0.1, 0.2) == "train"
                            for p in numbered)
    assert all(split_of(p, 0.1, 0.2) == "train" for p in pieces)
    # the held-out splits are those of --too-long drop
    d = build_corpus(text_file(long + short, "same.txt"), count_words, max_length=8,
                     validation_fraction=0.1, test_fraction=0.2)
    assert d.texts("test") == c.texts("test") and d.texts("validation") == c.texts("validation")
    # new data is evaluated whole: pieces are a training device
    cfg, same = DataConfig.from_meta({"data": "x.txt", "too_long": "pieces"}, data="other.txt")
    assert not same and cfg.too_long == "drop"
    with pytest.raises(Exception, match="drop, truncate or pieces"):
        DataConfig(too_long="split")


def test_jsonl_and_csv(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text(json.dumps({"body": "first text"}) + "\n\n" + json.dumps({"body": "second  text"}) + "\n")
    assert load_raw_texts(str(j), "body")[0] == ["first text", "second  text"]
    c = tmp_path / "d.csv"
    c.write_text('id,text\n1,"a, quoted text"\n2,plain\n')
    assert load_raw_texts(str(c))[0] == ["a, quoted text", "plain"]


@pytest.mark.parametrize("content, name, message", [
    (b"", "empty.txt", "is empty"),
    (b"\n  \n\t\n", "blank.txt", "only blank lines"),
    (b"fine\nalso fine\nbad \xff byte\n", "latin.txt", "line 3: bytes that are not UTF-8"),
    (b'{"text": "ok"}\n{"text": oops}\n', "bad.jsonl", "line 2: not valid JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n', "field.jsonl", "line 2: no field 'text'"),
    (b"id,body\n1,x\n", "col.csv", "no column 'text'"),
    (b"x", "data.parquet", "unknown file type"),
])
def test_bad_files_say_what_is_wrong(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_raw_texts(str(path))


def test_missing_file_and_nothing_left(tmp_path, text_file):
    with pytest.raises(DataError, match="not found"):
        load_raw_texts(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="no text is left"):
        build_corpus(text_file(["far too many words in this text"]), count_words, max_length=2)


def test_default_corpus_is_the_packaged_wikipedia():
    texts, paragraphs = load_raw_texts("wiki-offline")
    assert paragraphs and len(texts) > 5000
    sents = [s for t in texts[:200] for s in split_sentences(t)]
    assert len(sents) > 400 and all(s[-1] in ".!?\"')]" or len(s) < 400 for s in sents)
