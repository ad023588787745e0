import json
import os

import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from conftest import sentences
from recon.cache import cached_encode, encoder_cache
from recon.config import EvalConfig, TrainConfig, parse
from recon.device import resolve_precision
from recon.encoder import EncoderSpec
from recon.errors import ConfigError


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
    # evaluate.py's retrieval control reads the training split's vectors where training left them
    capsys.readouterr()
    for run in ("a", "c"):
        assert evaluate_script.main(["--checkpoint", str(tmp_path / run), "--split", "validation", "--num-beams", "1",
                                     "--output-dir", str(tmp_path / f"ev-{run}")]) == 0
    out = capsys.readouterr().out
    assert out.count("training texts, their vectors read from the cache") == 1  # run c kept no cache: encoded
    metrics = {run: json.loads((tmp_path / f"ev-{run}" / "metrics.json").read_text()) for run in ("a", "c")}
    assert metrics["a"]["retrieval_pool_size"] == metrics["c"]["retrieval_pool_size"] > 150  # the training split
    assert [metrics[run]["control_retrieval_bleu"] for run in ("a", "c")] == [metrics["a"]["control_retrieval_bleu"]] * 2


def test_the_encoders_precision_keys_the_cache_and_moves_its_vectors_a_little(tiny_encoder_dir, tmp_path):
    spec = EncoderSpec(tiny_encoder_dir, max_length=16)
    enc = spec.build().eval()
    texts = sentences(40)
    vectors, ids = {}, {}
    for precision in ("fp32", "bf16"):
        enc.precision = precision
        cache_dir, ids[precision] = encoder_cache(spec, enc, str(tmp_path))
        vectors[precision], hit = cached_encode(enc, texts, cache_dir, ids[precision])
        assert not hit  # the bf16 pass does not read the fp32 entry
        again, hit = cached_encode(enc, texts, cache_dir, ids[precision])
        assert hit and torch.equal(again, vectors[precision])
    assert (ids["fp32"]["precision"], ids["bf16"]["precision"]) == ("fp32", "bf16")
    assert not torch.equal(vectors["fp32"], vectors["bf16"])
    same = torch.nn.functional.cosine_similarity(vectors["fp32"], vectors["bf16"], dim=-1)
    assert same.min() > 0.99, same.min()
    enc.precision = "auto"  # resolved on this machine, then keyed as what ran
    assert encoder_cache(spec, enc, str(tmp_path))[1]["precision"] == resolve_precision("auto", torch.device("cpu"))


def test_an_unknown_encoder_precision_is_refused(tiny_encoder_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"--encoder-precision must be one of \('auto', 'bf16', 'fp32', 'bf16-cuda-only'\), not 'fp16'"):
        parse(TrainConfig, ["--encoder", tiny_encoder_dir, "--output-dir", str(tmp_path / "x"),
                            "--encoder-precision", "fp16"])
    with pytest.raises(ConfigError, match="--encoder-precision must be one of"):
        parse(EvalConfig, ["--checkpoint", "x", "--output-dir", "y", "--encoder-precision", "half"])
