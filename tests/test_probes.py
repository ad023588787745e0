"""Probing tasks and probes: the tasks are built as SentEval builds them, the scores are what they
say, a probe finds what a vector holds where a random vector holds nothing, and the decoder is set
beside the probe on the same vectors."""

import gzip
import json
import os
import random

import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from conftest import sentences
from recon.errors import ReconError
from recon.probes import (LENGTH_BINS, bow_task, bshift, bshift_task, decoder_vs_probe, export_senteval, main,
                          majority, read_predictions, score, sentlen_task, wc_task)


def splits_of(texts):
    n = len(texts)
    return {"train": texts[:int(0.7 * n)], "validation": texts[int(0.7 * n):int(0.8 * n)], "test": texts[int(0.8 * n):]}


def test_bshift_swaps_one_adjacent_pair():
    rng = random.Random(0)
    for t in sentences(50):
        s = bshift(t, rng)
        a, b = t.split(), s.split()
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        assert sorted(a) == sorted(b) and len(diff) == 2 and diff[1] == diff[0] + 1
    assert bshift("same same", rng) is None


def test_tasks_follow_senteval(tmp_path):
    texts = [" ".join(["w"] * n) + "." for n in range(1, 40)]
    task = sentlen_task(splits_of(texts))
    for split in task.texts:
        for t, y in zip(task.texts[split], task.labels[split]):
            lo, hi = LENGTH_BINS[y]
            assert lo <= len(t.split()) <= hi
    wc = wc_task(splits_of(sentences(600)), n_words=6, skip=0)
    for split in wc.texts:
        for t, y in zip(wc.texts[split], wc.labels[split]):
            held = [w for w in wc.classes if w in t.lower().replace(".", "").split()]
            assert held == [wc.classes[y]]  # exactly one of the chosen words
    shift = bshift_task(splits_of(sentences(400)))
    assert 0.35 < sum(shift.labels["train"]) / len(shift.labels["train"]) < 0.65
    export_senteval(splits_of(sentences(300)), tmp_path, wc_words=6)
    line = (tmp_path / "bigram_shift.txt").read_text().splitlines()[0].split("\t")
    assert line[0] == "tr" and line[1] in ("original", "inverted") and len(line) == 3


def test_predictions_are_read_by_reference_plain_or_gzipped(tmp_path):
    texts = sentences(6, seed=3)
    rows = [{"reference": t, "prediction": t.upper()} for t in reversed(texts)]  # another order than texts
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "predictions.jsonl").write_text(lines)
    with gzip.open(tmp_path / "predictions.jsonl.gz", "wt") as f:
        f.write(lines)
    for name in ("predictions.jsonl", "predictions.jsonl.gz"):
        predictions, _ = read_predictions(str(tmp_path / name), texts)
        assert predictions == [t.upper() for t in texts]
    with pytest.raises(ReconError, match="no prediction for 1 of the 7"):
        read_predictions(str(tmp_path / "predictions.jsonl.gz"), texts + ["a sentence it never decoded"])


def test_bag_of_words_recall_and_decoder_beside_probe():
    splits = {"train": ["a b c", "a b d", "a e"], "validation": [], "test": ["a c d", "b e"]}
    task = bow_task(splits, vocab_size=10, stop=1)  # "a" is the one stop word
    idx = {w: i for i, w in enumerate(task.classes)}
    logits = torch.zeros(2, len(task.classes))
    logits[0, idx["c"]], logits[0, idx["b"]], logits[0, idx["a"]] = 5, 4, 3  # sentence 1: c right, b wrong
    logits[1, idx["e"]], logits[1, idx["b"]] = 5, 4  # sentence 2: both right
    r = score(task, logits, "test")
    assert r["recall_all"] == pytest.approx(100 * 4 / 5)  # a c | b (a right, c right, d missed) + b e
    assert r["recall_content"] == pytest.approx(100 * 3 / 4)  # c (d missed) + b e
    d = decoder_vs_probe(task, logits, ["the c and d", "nothing"])
    assert d["content_words"] == 4 and d["decoder_content_recall"] == pytest.approx(50.0)
    assert d["probe_content_recall"] == pytest.approx(75.0)
    assert d["probe_words_the_decoder_writes"] == pytest.approx(100 / 3)  # of c, b, e the decoder wrote c
    assert majority(task)["recall_all"] > 0


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    rng = random.Random(0)
    texts = list(dict.fromkeys(" ".join(t.split()[:rng.randint(5, 9)]) for t in sentences(1500)))
    path = tmp_path_factory.mktemp("probes") / "data.txt"
    path.write_text("\n".join(texts) + "\n")
    return str(path)


def test_probes_read_the_vector_and_the_random_control_does_not(tiny_encoder_dir, probe_data, tmp_path):
    out = tmp_path / "probes"
    assert main(["--encoder", tiny_encoder_dir, "--data", probe_data, "--output-dir", str(out), "--cache-dir", "",
                 "--wc-words", "8", "--bow-vocab", "40", "--stop-words", "3", "--validation-fraction", "0.1",
                 "--test-fraction", "0.2", "--probe-tasks", "sentlen,bow"]) == 0
    r = json.loads((out / "probes.json").read_text())["tasks"]
    assert r["bow"]["mlp"]["recall_content"] > r["bow"]["random_mlp"]["recall_content"] + 20
    assert r["sentlen"]["mlp"]["accuracy"] >= r["sentlen"]["majority"]["accuracy"]
    assert "hidden-layer probe" in (out / "probes.md").read_text() and (out / "probes.png").stat().st_size > 0


def test_probes_of_a_checkpoint_set_its_decoder_beside_the_probe(tiny_encoder_dir, probe_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_script.main(["--encoder", tiny_encoder_dir, "--data", probe_data, "--output-dir", str(run),
                              "--max-steps", "30", "--d-model", "32", "--n-layer", "1", "--n-head", "2",
                              "--vocab-size", "400", "--no-eval", "--cache-dir", "", "--validation-fraction", "0.1",
                              "--test-fraction", "0.2"]) == 0
    out = tmp_path / "probes"
    assert main(["--checkpoint", str(run), "--output-dir", str(out), "--cache-dir", "", "--bow-vocab", "40",
                 "--stop-words", "3", "--probe-tasks", "bow"]) == 0
    d = json.loads((out / "probes.json").read_text())["decoder_vs_probe"]
    assert d["content_words"] > 0 and 0 <= d["decoder_content_recall"] <= 100
    assert "Decoder beside probe" in (out / "probes.md").read_text()
    assert main(["--checkpoint", str(run), "--encoder", "other", "--output-dir", str(out)]) == 2
    assert "drop ['encoder']" in capsys.readouterr().err

    # any other decoding beside the same probe, from an evaluation's predictions: evaluate.py --probes
    # sets its own (as the run evaluates itself: 8 beams, the 3-gram ban, 3 steps of vector feedback) beside the greedy
    # pass; a file that writes the references back
    # writes every content word; a file short of test sentences is refused before any work
    ev = tmp_path / "eval"
    assert evaluate_script.main(["--checkpoint", str(run), "--output-dir", str(ev), "--retrieval-pool", "0",
                                 "--probes", "--bow-vocab", "40", "--stop-words", "3", "--probe-tasks", "bow"]) == 0
    rows = json.loads((ev / "probes.json").read_text())["decodings"]
    fed = "8 beams, 3-gram ban, then 3 vector-feedback steps (rate 0.15, beam 8)"
    assert [r["decoding"] for r in rows] == ["greedy, no ban", fed]
    assert rows[0]["probe_content_recall"] == rows[1]["probe_content_recall"]  # one probe, two decodings
    assert f"| {fed} |" in (ev / "probes.md").read_text()
    lines = (ev / "predictions.jsonl").read_text().splitlines()
    perfect = tmp_path / "perfect" / "predictions.jsonl"
    perfect.parent.mkdir()
    perfect.write_text("".join(json.dumps({"reference": r["reference"], "prediction": r["reference"]}) + "\n"
                               for r in map(json.loads, lines)))
    assert main(["--checkpoint", str(run), "--output-dir", str(out), "--cache-dir", "", "--bow-vocab", "40",
                 "--stop-words", "3", "--probe-tasks", "bow", "--predictions", f"{ev}/predictions.jsonl,{perfect}"]) == 0
    rows = json.loads((out / "probes.json").read_text())["decodings"]
    assert rows[1]["decoding"] == fed and rows[2]["decoding"] == str(perfect)  # no metrics.json there
    assert rows[2]["decoder_content_recall"] == pytest.approx(100.0)
    assert rows[2]["probe_words_the_decoder_writes"] == pytest.approx(100.0)
    perfect.write_text("\n".join(lines[1:]) + "\n")
    assert main(["--checkpoint", str(run), "--output-dir", str(out), "--predictions", str(perfect)]) == 2
    assert "no prediction for 1 of the" in capsys.readouterr().err
    assert main(["--checkpoint", str(run), "--output-dir", str(out), "--predictions", "nowhere.jsonl"]) == 2
    assert "no such file nowhere.jsonl" in capsys.readouterr().err


def test_a_sweep_with_probes_puts_them_in_its_table(tiny_encoder_dir, probe_data, tmp_path):
    from recon.sweep import run_sweep
    from recon.training import train
    spec = {"output_dir": str(tmp_path / "sweep"), "probes": True,
            "base": {"encoder": tiny_encoder_dir, "data": probe_data, "max_steps": 4, "d_model": 32, "n_layer": 1,
                     "n_head": 2, "vocab_size": 400, "batch_size": 16, "validation_fraction": 0.1,
                     "test_fraction": 0.2, "cache_dir": "", "eval_split": "validation"},
            "grids": [{"representation": ["cls", "mean"]}]}
    rows = run_sweep(spec, lambda cfg: train(cfg, log=lambda *a: None), log=lambda *a: None)
    assert [r["run"] for r in rows] == ["representation=cls", "representation=mean"]
    for r in rows:
        assert {"probe_sentlen", "probe_bshift", "probe_bow_content", "decoder_over_probe"} <= set(r)
        probes = json.loads(open(os.path.join(spec["output_dir"], r["run"], "probes", "probes.json")).read())
        assert "skipped" in probes["tasks"]["wc"]  # 1,000 mid-frequency words: more than this tiny corpus has
        assert os.path.isfile(os.path.join(spec["output_dir"], r["run"], "eval-validation", "metrics.json"))
    assert "probe_bow_content" in (tmp_path / "sweep" / "results.md").read_text()


def test_session_probes_set_each_runs_predictions_beside_one_probe_per_representation(tiny_encoder_dir, probe_data,
                                                                                     tmp_path, capsys):
    """experiments/session_probes.py: a session's runs come back without weights; their probes are
    trained here on the same corpus's splits and scored on exactly the sentences the runs decoded."""
    import importlib.util

    from recon.data import DataConfig
    from recon.encoder import EncoderSpec
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "session_probes.py")
    spec = importlib.util.spec_from_file_location("session_probes", path)
    session_probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(session_probes)
    split = {"max_length": 32, "validation_fraction": 0.1, "test_fraction": 0.2, "split_seed": 0}
    encoder = EncoderSpec(encoder=tiny_encoder_dir).build()
    test = DataConfig(data=probe_data, validation_fraction=0.1, test_fraction=0.2).build(encoder.count_tokens, 32).texts("test")
    sample = test[::2]  # a sample of the test split, as --eval-max-examples decodes
    runs = tmp_path / "2-headline"
    for name, representation, prediction in (("cls-s0", "cls", lambda t: t), ("cls-s1", "cls", lambda t: "the"),
                                              ("mean-s0", "mean", lambda t: t)):
        (runs / name / "eval-test").mkdir(parents=True)
        (runs / name / "meta.json").write_text(json.dumps({"args": {"representation": representation, "layer": -1, **split}}))
        (runs / name / "eval-test" / "predictions.jsonl").write_text(
            "".join(json.dumps({"reference": t, "prediction": prediction(t)}) + "\n" for t in sample))
    out = tmp_path / "probes"
    assert session_probes.main(["--runs", str(runs), "--data", probe_data, "--train", "500", "--validation", "100",
                                "--output-dir", str(out), "--encoder", tiny_encoder_dir, "--", "--bow-vocab", "40",
                                "--stop-words", "3", "--probe-tasks", "bow"]) == 0
    cls = json.loads((out / "cls-layer-1" / "probes.json").read_text())
    rows = {r["decoding"]: r for r in cls["decodings"]}
    perfect, poor = (rows[str(runs / n / "eval-test" / "predictions.jsonl")] for n in ("cls-s0", "cls-s1"))
    assert perfect["probe_words_the_decoder_writes"] == pytest.approx(100.0)
    assert poor["probe_words_the_decoder_writes"] < 50
    mean = json.loads((out / "mean-layer-1" / "probes.json").read_text())
    assert [r["decoding"] for r in mean["decodings"]] == [str(runs / "mean-s0" / "eval-test" / "predictions.jsonl")]
    # a run that decoded sentences outside this corpus's test split is refused with what to give
    (runs / "cls-s0" / "eval-test" / "predictions.jsonl").write_text(json.dumps({"reference": "not in it", "prediction": ""}) + "\n")
    with pytest.raises(SystemExit, match="not in this corpus's test split"):
        session_probes.main(["--runs", str(runs), "--data", probe_data, "--output-dir", str(out), "--encoder", tiny_encoder_dir])
