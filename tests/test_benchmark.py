"""A tiny run of benchmarks/benchmark.py: it compares the two methods on the same work."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import benchmark  # noqa: E402


def test_benchmark_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # padded to multiples of 8 as --compile pads: a batch of 41 tokens ([EOS] included) takes 48 positions
    # (the first H200 run of --compile stopped there: both models had room for 42)
    assert benchmark.main(["--sentences", "96", "--steps", "2", "--batch-size", "16", "--gen-sentences", "4",
                           "--max-new-tokens", "40", "--d-model", "32", "--n-layer", "1", "--n-head", "2",
                           "--vocab-size", "400", "--pad-multiple", "8", "--warmup", "1", "--gen-batch-size", "3",
                           "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    for name in ("training tokens/s", "generation sentences/s, greedy", "generation sentences/s, beam 4"):
        r = rows[name]
        assert r["recon"] > 0 and r["baseline"] > 0 and abs(r["ratio"] - r["recon"] / r["baseline"]) < 1e-9
    static = "generation sentences/s, greedy, fixed shapes"  # on the CPU: no CUDA graph
    for name in ("generation sentences/s, greedy", "generation sentences/s, beam 4", static):
        # the same work, in batches of 3 (4 sentences: a full batch and a short one)
        assert rows[name]["recon_tokens"] == rows[name]["baseline_tokens"] == 4 * 41
    assert rows["encode corpus once"]["seconds"] > 0
    assert 0 <= rows["training padding % of positions"]["recon"] < rows["training padding % of positions"]["baseline"]
    assert "| training tokens/s |" in capsys.readouterr().out


@pytest.mark.long  # two fresh processes timing the full-size default step
def test_allocator_benchmark_measures_both_processes(capsys):
    import allocator
    assert allocator.main(["--steps", "2"]) == 0  # the default step: 61 MB logits
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| as Python") or line.startswith("| keep_freed")]
    assert len(rows) == 2
    plain, kept = (float(r.split("|")[5].replace(",", "")) for r in rows)  # page faults per step
    assert kept < plain / 3  # as Python starts, each of a step's blocks over 32 MB is faulted in afresh (seen: 149k against 15k)
    assert "step time ratio" in out


def test_decoder_step_benchmark_times_each_setting_beside_the_previous_default(capsys):
    import decoder_step
    assert decoder_step.main(["--steps", "1", "--rounds", "1", "--batch-size", "2", "--tokens", "3", "--vocab-size", "300",
                              "--threads", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == list(decoder_step.SETTINGS)
    assert rows[0][3].strip() == "1.00" and all(float(r[1]) > 0 for r in rows)


def test_decoder_step_benchmark_times_only_the_settings_asked_for(capsys):
    import decoder_step
    args = ["--steps", "1", "--rounds", "1", "--batch-size", "2", "--tokens", "3", "--vocab-size", "300", "--threads", "1"]
    assert decoder_step.main([*args, "--only", "encoder-warm"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == [name for name in decoder_step.SETTINGS if "encoder-warm" in name]
    assert len(rows) == 2 and rows[0][3].strip() == "1.00"
    with pytest.raises(SystemExit):
        decoder_step.main([*args, "--only", "no such setting"])


def test_gemm_ceiling_counts_the_decoders_multiplies(tmp_path):
    """The ceiling times the same matrix multiplies whose FLOPs train.py's MFU counts."""
    import gemm_ceiling
    from recon.decoder import DecoderSpec
    spec = DecoderSpec(d_model=32, n_layer=2, n_head=2, max_target_len=16, num_prefix=1, bow_weight=0.0)
    decoder = spec.build(vector_dim=24, vocab_size=300)
    shapes = gemm_ceiling.linear_stack(32, 2, 4 * 32, 300)
    assert 6 * sum(i * o for i, o in shapes) == decoder.flops_per_token(0) - 12 * 2 * 32 * 1  # attention aside
    out = tmp_path / "gemm.json"
    rows = gemm_ceiling.main(["--device", "cpu", "--dtype", "float32", "--d-model", "32", "--n-layer", "2",
                              "--vocab-size", "300", "--tokens", "64,128", "--repeats", "2", "--output", str(out)])
    assert [r["tokens"] for r in rows] == [64, 128] and all(r["seconds"] > 0 for r in rows)
    assert all(r["percent_of_peak"] is None for r in rows)  # no peak known for a CPU: no made-up percentage
    assert json.loads(out.read_text())["rows"][1]["tflops"] == rows[1]["tflops"]
