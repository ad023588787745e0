"""Runs that end at the right time: early stopping keeps and evaluates the best checkpoint, and a
finished run is continued with an explicit extension of its schedule."""

import json
import math
import os

import pytest

import evaluate as evaluate_script
import train as train_script
from conftest import sentences
from recon import ReconModel
from recon.checkpoint import list_checkpoints, load_meta, resolve_checkpoint
from recon.schedule import EarlyStopping, lr_factor, segment

TINY = ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--batch-size", "16", "--vocab-size", "400",
        "--validation-fraction", "0.1", "--test-fraction", "0.1", "--warmup-steps", "2", "--cache-dir", ""]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.txt"
    path.write_text("\n".join(sentences(300)) + "\n")
    return str(path)


def run(encoder, data, out, *extra):
    return ["--encoder", encoder, "--data", data, "--output-dir", str(out), *TINY, *extra]


def log_records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_early_stopping_counts_checks_without_improvement():
    stop = EarlyStopping(patience=2, min_delta=0.1)
    assert stop.update(10, 5.0) and not stop.should_stop
    assert not stop.update(20, 4.95)  # better, but by less than min_delta
    assert stop.update(30, 4.8) and stop.best_step == 30 and stop.since_best == 0
    assert not stop.update(40, 4.9) and not stop.should_stop
    assert not stop.update(50, 4.85) and stop.should_stop
    again = EarlyStopping(2, 0.1, stop.state())  # what meta.json records resumes the count
    assert (again.best, again.best_step, again.since_best, again.should_stop) == (4.8, 30, 2, True)
    assert not EarlyStopping(patience=0).should_stop


def test_a_segment_appended_leaves_the_first_one_as_it_was():
    one = [segment(0, 100, 10, 1e-3, 0.1)]
    two = one + [segment(100, 150, 5, 5e-4, 0.2)]
    f, g = lr_factor(one), lr_factor(two)
    assert all(f(s) == g(s) for s in range(100))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(99) == pytest.approx(0.1, abs=1e-3)
    assert g(100) == pytest.approx(0.5 / 5) and g(104) == pytest.approx(0.5)  # warmup to the new peak, 5e-4 / 1e-3
    assert g(149) == pytest.approx(0.5 * 0.2, abs=1e-3) and g(500) == pytest.approx(0.1)
    assert g(127) == pytest.approx(0.5 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 22 / 45))))


def test_early_stopping_keeps_and_evaluates_the_best_checkpoint(tiny_encoder_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    # a min-delta no loss can beat: the first check stays the best, and two more end the run
    args = run(tiny_encoder_dir, data, out, "--max-steps", "200", "--eval-steps", "10", "--save-total-limit", "1",
               "--early-stopping-patience", "2", "--early-stopping-min-delta", "100")
    assert train_script.main(args) == 0
    printed = capsys.readouterr().out
    assert "early stopping at step 30" in printed and "the best checkpoint is step 10" in printed
    records = log_records(out)
    assert records[-1]["step"] == 30 and [r["step"] for r in records if r.get("best_so_far")] == [10]
    assert list_checkpoints(out) == [10, 30]  # the best survives --save-total-limit 1
    meta = load_meta(out / "checkpoint-30")
    assert meta["early_stopping"]["best_step"] == 10 and meta["early_stopping"]["stopped_at"] == 30
    with open(out / "eval-test" / "metrics.json") as f:
        final = json.load(f)
    assert final["step"] == 10 and final["checkpoint"] == str(out / "checkpoint-10")
    assert resolve_checkpoint(str(out)) == str(out / "checkpoint-10")
    best, last = ReconModel.from_pretrained(str(out)), ReconModel.from_pretrained(str(out / "checkpoint-30"))
    assert any((p != q).any() for p, q in zip(best.decoder.parameters(), last.decoder.parameters()))
    # resuming a stopped run trains nothing more
    assert train_script.main(args + ["--resume", "--no-eval"]) == 0
    assert "stopped early at step 30" in capsys.readouterr().out and list_checkpoints(out) == [10, 30]
    # and the evaluation of the run folder is the best checkpoint's
    assert evaluate_script.main(["--checkpoint", str(out), "--output-dir", str(tmp_path / "ev"),
                                 "--retrieval-pool", "0"]) == 0
    with open(tmp_path / "ev" / "metrics.json") as f:
        assert json.load(f)["checkpoint"].endswith("checkpoint-10")


def test_a_finished_run_continues_with_extend_and_records_it(tiny_encoder_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    base = run(tiny_encoder_dir, data, out, "--eval-steps", "10", "--no-eval")
    assert train_script.main(base + ["--max-steps", "20"]) == 0
    capsys.readouterr()
    # more steps without --extend are refused, and the message says what to add
    assert train_script.main(base + ["--max-steps", "30", "--resume"]) == 2
    assert "add --extend" in capsys.readouterr().err
    assert train_script.main(base + ["--max-steps", "30", "--resume", "--extend", "--d-model", "64"]) == 2
    assert "start a new run" in capsys.readouterr().err  # the model's shape is not the schedule's
    assert train_script.main(base + ["--max-steps", "10", "--resume", "--extend"]) == 2
    assert "already runs to step 20" in capsys.readouterr().err
    assert train_script.main(base + ["--max-steps", "30", "--lr", "1e-3", "--warmup-steps", "0", "--resume",
                                     "--extend"]) == 0
    assert "extending the schedule from step 20 to 30" in capsys.readouterr().out
    meta = load_meta(out / "checkpoint-30")
    assert [(s["start"], s["end"], s["lr"]) for s in meta["schedule"]] == [(0, 20, 2e-3), (20, 30, 1e-3)]
    assert meta["extensions"][0]["from_step"] == 20 and meta["extensions"][0]["to_step"] == 30
    assert meta["args"]["max_steps"] == 30 and meta["step"] == 30
    records = {r["step"]: r for r in log_records(out)}
    assert sorted(records) == [10, 20, 30]
    # the lr logged after step 30: the new segment's floor, 0.1 of its 1e-3 peak
    assert records[30]["lr"] == pytest.approx(1e-4, rel=1e-3) and records[20]["lr"] == pytest.approx(2e-4, rel=1e-3)
    # the extended run is a run like any: resumed with its new flags it has nothing left to do
    assert train_script.main(base + ["--max-steps", "30", "--lr", "1e-3", "--warmup-steps", "0", "--resume"]) == 0
    assert list_checkpoints(out)[-1] == 30


def test_extend_needs_resume():
    assert train_script.main(["--extend"]) == 2


def test_time_limit_stops_saves_and_evaluates(tiny_encoder_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main(run(tiny_encoder_dir, data, out, "--max-steps", "1000", "--eval-steps", "500",
                                 "--time-limit", "0.001", "--eval-max-examples", "7")) == 0
    assert "stopped at step 10 of 1000: --time-limit" in capsys.readouterr().out
    assert list_checkpoints(out) == [10] and load_meta(out / "checkpoint-10")["stopped_at_time_limit"] == 10
    assert "val_loss" in log_records(out)[-1]  # the check it stopped at was evaluated
    with open(out / "eval-test" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["step"] == 10
    assert metrics["num_examples"] == 7  # --eval-max-examples: the first 7 of the test split
