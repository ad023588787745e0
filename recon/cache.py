"""Sentence vectors computed once and kept on disk, memory-mapped, reused across runs.

An entry is keyed by everything that decides the vectors: the encoder (name and fingerprint, which
includes a hash of its weights), representation, layer, maximum length, what enters at [CLS], the
precision it ran in (bf16 or fp32), and a hash of the texts in order. Change any of them and the key
changes: a stale entry is never read.
Entries are written to a temporary file and renamed, so a crash leaves no half-written entry.
"""

import hashlib
import json
import os

import numpy as np
import sentencepiece
import torch

from recon.data import text_hash
from recon.distributed import is_main, sharded
from recon.tokenizer import SPM_OPTIONS


DEFAULT_CACHE_DIR = os.path.join("checkpoints", "vector_cache")


def encoder_cache(spec, encoder, cache_dir):
    """(cache_dir, encoder_id) for cached_encode. Only a frozen pretrained encoder's vectors are
    kept ("" otherwise): random weights depend on the seed, a trained encoder on its training,
    and a random [CLS] changes at every forward."""
    frozen = not spec.saved_with_decoder and spec.cls_init != "random-per-forward"
    encoder_id = {"encoder": spec.encoder, "fingerprint": encoder.base_fingerprint, "representation": spec.representation,
                  "layer": spec.layer, "max_length": spec.max_length, "cls_init": spec.cls_init,
                  "precision": encoder.resolved_precision()}
    return (cache_dir if frozen else ""), encoder_id


def cache_key(encoder_id, texts):
    blob = json.dumps(encoder_id, sort_keys=True) + "\n" + text_hash(texts)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def cached_encode(encoder, texts, cache_dir, encoder_id, batch_size=256, progress=None):
    """(vectors (N, D), hit): from cache_dir when an entry for exactly these texts and this encoder
    exists, else computed and stored. cache_dir "" or None: always computed, never stored.
    Under torchrun every process encodes a shard and gets all the vectors; rank 0 writes the entry."""
    def encode():
        return sharded(lambda part: encoder.encode(part, batch_size, progress), texts).to(device)

    device = next(encoder.parameters()).device
    if not cache_dir:
        return encode(), False
    path = os.path.join(cache_dir, cache_key(encoder_id, texts) + ".npy")
    if os.path.isfile(path):
        arr = np.load(path, mmap_mode="c")  # copy-on-write map: pages are read as rows are used
        if arr.shape == (len(texts), encoder.dim):
            if progress is not None:
                progress.update(len(texts))
            return torch.from_numpy(arr).to(device), True
    vectors = encode()
    if not is_main():
        return vectors, False
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, vectors.float().cpu().numpy())
    os.replace(tmp, path)
    with open(path[:-4] + ".json", "w") as f:  # for people: what the entry holds
        json.dump({**encoder_id, "texts": len(texts), "texts_hash": text_hash(texts)}, f, indent=2)
    return vectors, False


def cached_sentencepiece(texts, vocab_size, cache_dir, train):
    """(model proto bytes, hit): the SentencePiece vocabulary of these training texts at this size,
    from cache_dir/tokenizers when trained before, else train(texts, vocab_size).proto, stored.
    Training is deterministic (all of a corpus under 2M sentences is read), so a cached vocabulary is
    the one a fresh run would train: for the 435k-sentence corpus, ~40 s saved a run here. The
    key: the texts' hash, the size, the training options and the sentencepiece version."""
    if not cache_dir:
        return train(texts, vocab_size).proto, False
    what = {"vocab_size": vocab_size, "options": SPM_OPTIONS, "sentencepiece": sentencepiece.__version__,
            "texts": text_hash(texts)}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()[:24]
    path = os.path.join(cache_dir, "tokenizers", f"{key}.model")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read(), True
    proto = train(texts, vocab_size).proto
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # runs side by side may write the same entry: each its own file, renamed
    with open(tmp, "wb") as f:
        f.write(proto)
    os.replace(tmp, path)
    return proto, False
