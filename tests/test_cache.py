import json
import os

import torch

import train as train_script
from conftest import sentences
from recon.cache import cached_encode


def test_cache_hits_only_for_the_same_texts_and_encoder(tiny_model, tmp_path, monkeypatch):
    enc = tiny_model.encoder
    calls = []
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda texts, *a, **k: calls.append(len(texts)) or real(texts, *a, **k))
    ident = {"encoder": "tiny", "representation": "cls", "layer": -1}
    texts = sentences(20)
    first, hit1 = cached_encode(enc, texts, str(tmp_path), ident)
    again, hit2 = cached_encode(enc, texts, str(tmp_path), ident)
    assert (hit1, hit2) == (False, True) and calls == [20]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert sorted(f.split(".")[-1] for f in os.listdir(tmp_path)) == ["json", "npy"]
    _, hit = cached_encode(enc, texts[:-1], str(tmp_path), ident)  # other texts
    assert not hit
    _, hit = cached_encode(enc, texts, str(tmp_path), {**ident, "layer": 1})  # another layer
    assert not hit and calls == [20, 19, 20]
    _, hit = cached_encode(enc, texts, "", ident)  # no cache: computed, nothing written
    assert not hit and calls == [20, 19, 20, 20] and len(os.listdir(tmp_path)) == 6


def test_a_second_run_reads_the_cache_and_trains_identically(tiny_encoder_dir, tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(200)) + "\n")
    args = ["--encoder", tiny_encoder_dir, "--data", str(data), "--max-steps", "6", "--d-model", "32", "--n-layer", "1",
            "--n-head", "2", "--vocab-size", "400", "--batch-size", "16", "--validation-fraction", "0.1",
            "--test-fraction", "0.1", "--no-eval", "--cache-dir", str(tmp_path / "cache")]
    assert train_script.main(args + ["--output-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "vectors encoded" in out and "decoder vocabulary: read from the cache" not in out
    assert train_script.main(args + ["--output-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "vectors read from the cache" in out and "decoder vocabulary: read from the cache" in out
    log = lambda run: [json.loads(line)["train_loss"] for line in open(tmp_path / run / "metrics.jsonl")]
    assert log("a") == log("b")
    # the cached vocabulary is the one training makes afresh (SentencePiece is deterministic here)
    no_cache = [a if a != str(tmp_path / "cache") else "" for a in args]
    assert train_script.main(no_cache + ["--output-dir", str(tmp_path / "c")]) == 0
    vocab = lambda run: open(next((tmp_path / run).glob("checkpoint-*/decoder_spm.model")), "rb").read()
    assert vocab("a") == vocab("b") == vocab("c")
    assert log("c") == log("a")
