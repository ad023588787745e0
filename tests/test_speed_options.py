"""The speed options change speed, not the numbers (or, for --precision, only as far as bf16
rounding goes): --compile, --precision, and the padding bookkeeping of length bucketing
(--bucket-pool)."""

import json
import subprocess
import sys

import pytest
import torch

import recon.decoder
from conftest import sentences
from recon.config import ConfigError, TrainConfig, parse
from recon import ReconModel
from recon.decoder import DecoderSpec
from recon.device import autocast, resolve_precision
from recon.training import train


def run(encoder, data, out, *extra):
    argv = ["--encoder", encoder, "--data", str(data), "--output-dir", str(out), "--max-steps", "10",
            "--batch-size", "16", "--d-model", "32", "--n-layer", "1", "--n-head", "2", "--vocab-size", "400",
            "--dropout", "0", "--no-eval", "--cache-dir", "", *extra]
    train(parse(TrainConfig, argv), log=lambda *a: None)
    with open(out / "metrics.jsonl") as f:
        log = [json.loads(line) for line in f]
    with open(out / "checkpoint-10" / "meta.json") as f:
        return log, json.load(f)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("speed") / "data.txt"
    path.write_text("\n".join(sentences(300)) + "\n")
    return path


@pytest.mark.long  # about 2 minutes of inductor compiling on a 2-core CPU
def test_compiled_training_gives_the_same_losses(tmp_path, tiny_encoder_dir, data):
    plain, _ = run(tiny_encoder_dir, data, tmp_path / "plain")
    compiled, meta = run(tiny_encoder_dir, data, tmp_path / "compiled", "--compile")
    assert meta["args"]["compile"] is True
    assert compiled[-1]["train_loss"] == pytest.approx(plain[-1]["train_loss"], rel=1e-3)
    assert compiled[-1]["val_loss"] == pytest.approx(plain[-1]["val_loss"], rel=1e-3)


def test_precision_auto_is_bf16_only_where_the_hardware_multiplies_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr("recon.device.cpu_has_bf16", lambda: native)
        assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
        assert resolve_precision("auto", cuda) == "bf16"
        assert resolve_precision("bf16-cuda-only", cpu) == "fp32"  # what runs before the flag did
        assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="--precision must be one of"):
        parse(TrainConfig, ["--precision", "fp16"])


def test_bf16_training_step_keeps_attention_in_fp32_on_the_cpu(monkeypatch):
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(recon.decoder.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.append(q.dtype) or sdpa(q, k, v, **kw))
    torch.manual_seed(0)
    decoder = DecoderSpec(d_model=32, n_layer=2, n_head=2, embedding_init="random").build(16, 50)
    v, y = torch.randn(4, 16), torch.randint(5, 50, (4, 7))
    full = decoder(v, y)
    with autocast(torch.device("cpu"), "bf16"):
        low = decoder(v, y)
    assert seen == [torch.float32] * 4  # 2 layers, fp32 then under autocast: attention never in bf16
    assert low.dtype == torch.bfloat16  # the matrix products are
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()
    low.float().sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in decoder.parameters())


def test_bf16_training_records_its_precision_and_tracks_fp32(tmp_path, tiny_encoder_dir, data):
    full, meta32 = run(tiny_encoder_dir, data, tmp_path / "fp32", "--precision", "fp32", "--encoder-precision", "fp32",
                       "--generation-precision", "fp32")
    low, meta16 = run(tiny_encoder_dir, data, tmp_path / "bf16", "--precision", "bf16", "--encoder-precision", "bf16",
                      "--generation-precision", "bf16")
    assert (meta32["precision"], meta16["precision"]) == ("fp32", "bf16")
    assert (meta32["encoder_precision"], meta16["encoder_precision"]) == ("fp32", "bf16")
    assert (meta32["generation_precision"], meta16["generation_precision"]) == ("fp32", "bf16")
    for name in ("fp32", "bf16"):  # a checkpoint encodes and generates as its run did
        model = ReconModel.from_pretrained(str(tmp_path / name))
        assert (model.encoder.precision, model.decoder.generation_precision) == (name, name)
    assert low[-1]["train_loss"] != full[-1]["train_loss"]  # it did run in bf16
    assert low[-1]["val_loss"] == pytest.approx(full[-1]["val_loss"], rel=0.05)


def test_padding_is_measured_and_bucketing_lowers_it(tmp_path, tiny_encoder_dir, data):
    # sentences of mixed lengths: the synthetic ones plus their first halves
    mixed = tmp_path / "mixed.txt"
    lines = sentences(300)
    mixed.write_text("\n".join(lines + [" ".join(s.split()[:4]) + "." for s in lines]) + "\n")
    log0, meta0 = run(tiny_encoder_dir, mixed, tmp_path / "off", "--bucket-pool", "0")
    log1, meta1 = run(tiny_encoder_dir, mixed, tmp_path / "on", "--bucket-pool", "8")
    assert meta0["padding_fraction"] == pytest.approx(meta1["padding_fraction_unbucketed"])
    assert meta1["padding_fraction"] < meta0["padding_fraction"] / 2
    assert 0 <= log1[-1]["padding"] < log0[-1]["padding"]


FAULTS = """
import resource, sys, torch
from recon.device import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(10):  # settle: each distinct heap block the tensor lands in is faulted in once
    torch.empty(25_000_000).fill_(1.0)  # 100 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(25_000_000).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_stops_large_tensors_being_faulted_in_again():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        return kept, int(faults)
    (_, plain), (kept, kept_faults) = run("plain"), run("keep")
    assert kept == "True"
    assert plain > 100_000  # each 100 MB block mapped and faulted in afresh: 24k pages a time
    # kept: a small allocation between two uses can leave the freed block behind, so the tensor
    # alternates between two or three heap blocks, each faulted in on its first use (CI once saw 3
    # in the first 10 uses); after the settling uses, reuse faults nothing (seen: 0)
    assert kept_faults < plain / 4


def test_generation_runs_in_the_precision_it_is_given_and_tracks_fp32(tmp_path, tiny_encoder_dir, data):
    run(tiny_encoder_dir, data, tmp_path / "run", "--encoder-precision", "fp32", "--generation-precision", "fp32")
    model = ReconModel.from_pretrained(str(tmp_path / "run"))
    vectors = model.encode(sentences(24, seed=5))
    seen = []
    model.decoder.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    texts, logits = {}, {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        model.set_precisions(generation=precision)
        texts[precision] = model.generate_from_vectors(vectors, num_beams=2)
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}, (precision, set(seen))
        with autocast(torch.device("cpu"), precision), torch.no_grad():
            logits[precision] = model.decoder(vectors, torch.full((24, 1), model.config.bos_id)).float()
    assert model.resolved_generation_precision() == "bf16"
    # bf16 rounding moves the logits a little, not what the decoder prefers
    assert (logits["bf16"] - logits["fp32"]).abs().max() < 0.05 * logits["fp32"].abs().max()
    top2 = logits["fp32"].topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * (logits["bf16"] - logits["fp32"]).abs().amax(-1)
    assert torch.equal(logits["bf16"].argmax(-1)[clear], logits["fp32"].argmax(-1)[clear]) and clear.any()
    assert len(texts["bf16"]) == 24 and all(isinstance(t, str) for t in texts["bf16"])
    with pytest.raises(ConfigError, match=r"--generation-precision must be one of \('auto', 'bf16', 'fp32', "
                                          r"'bf16-cuda-only'\), not 'fp16'"):
        parse(TrainConfig, ["--encoder", tiny_encoder_dir, "--generation-precision", "fp16"])
