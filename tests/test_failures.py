"""Interruption, resume, divergence and bad input: each fails loudly and loses nothing written."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from conftest import sentences
from recon import ReconModel
from recon.config import TrainConfig, parse
from recon.model import CheckpointError
from recon.training import TrainingDiverged, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# big enough that a step takes a few milliseconds, so a signal lands mid-run
MODEL = ["--d-model", "64", "--n-layer", "2", "--n-head", "4", "--batch-size", "64", "--vocab-size", "400",
         "--validation-fraction", "0.1", "--test-fraction", "0.1", "--eval-steps", "1000", "--no-eval", "--cache-dir", ""]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.txt"
    path.write_text("\n".join(sentences(400)) + "\n")
    return str(path)


def argv(encoder, data, out, *extra):
    return ["--encoder", encoder, "--data", data, "--output-dir", str(out), *MODEL, *extra]


def start(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, f"training ended before {path} appeared: {proc.communicate()[1][-2000:]}"
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.01)


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return {r["step"]: r["train_loss"] for r in map(json.loads, f)}


def test_sigkill_then_resume_reaches_the_same_losses(tiny_encoder_dir, data, tmp_path):
    steps = ["--max-steps", "150", "--save-steps", "30", "--save-total-limit", "10"]
    ref = start(argv(tiny_encoder_dir, data, tmp_path / "ref", *steps))
    assert ref.wait(timeout=300) == 0, ref.communicate()[1][-2000:]

    run = tmp_path / "run"
    proc = start(argv(tiny_encoder_dir, data, run, *steps))
    wait_for(run / "checkpoint-60", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = max(losses(run))
    assert killed_at < 150, "the run finished before it could be killed"

    resumed = start(argv(tiny_encoder_dir, data, run, *steps, "--resume"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in out
    want, got = losses(tmp_path / "ref"), losses(run)
    assert sorted(got) == sorted(want)  # lines written after the last checkpoint were dropped, then rewritten
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
    a = ReconModel.from_pretrained(str(tmp_path / "ref"))
    b = ReconModel.from_pretrained(str(run))
    for (name, p), q in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_encoder_dir, data, tmp_path):
    run = tmp_path / "run"
    proc = start(argv(tiny_encoder_dir, data, run, "--max-steps", "100000"))
    wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    (ckpt,) = [n for n in os.listdir(run) if n.startswith("checkpoint-")]
    step = int(ckpt.split("-")[1])
    assert step >= 10 and max(losses(run)) == step
    assert json.loads((run / ckpt / "meta.json").read_text())["step"] == step
    ReconModel.from_pretrained(str(run / ckpt))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_encoder_dir, data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = ReconModel.loss

    def failing_loss(self, vectors, targets, reduction="mean", **kwargs):
        calls["n"] += 1
        loss = real_loss(self, vectors, targets, reduction, **kwargs)
        return loss * float("nan") if calls["n"] > 25 else loss

    monkeypatch.setattr(ReconModel, "loss", failing_loss)
    cfg = parse(TrainConfig, argv(tiny_encoder_dir, data, tmp_path / "run", "--max-steps", "50", "--save-steps", "20",
                                  "--d-model", "32", "--n-head", "2"))
    with pytest.raises(TrainingDiverged, match=r"nan between steps 21 and 30.*checkpoint-20, is intact"):
        train(cfg, log=lambda *a: None)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-20", "data.json", "metrics.jsonl"]
    model = ReconModel.from_pretrained(str(tmp_path / "run"))
    assert all(torch.isfinite(p).all() for p in model.decoder.parameters())


def test_a_crash_during_save_leaves_the_previous_checkpoint(tiny_encoder_dir, data, tmp_path, monkeypatch):
    import recon.checkpoint as checkpoint
    real_save = checkpoint.torch.save

    def crash_on_second(obj, path):
        if "checkpoint-20" in str(path):
            raise OSError("disk full")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint.torch, "save", crash_on_second)
    cfg = parse(TrainConfig, argv(tiny_encoder_dir, data, tmp_path / "run", "--max-steps", "30", "--save-steps", "10",
                                  "--d-model", "32", "--n-head", "2"))
    with pytest.raises(OSError, match="disk full"):
        train(cfg, log=lambda *a: None)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert ReconModel.from_pretrained(str(tmp_path / "run")).config.d_model == 32
    from recon.model import resolve_checkpoint
    assert resolve_checkpoint(str(tmp_path / "run")).endswith("checkpoint-10")
    # and the run resumes from it
    cfg = parse(TrainConfig, argv(tiny_encoder_dir, data, tmp_path / "run", "--max-steps", "30", "--save-steps", "10",
                                  "--d-model", "32", "--n-head", "2", "--resume"))
    train(cfg, log=lambda *a: None)
    assert resolve_checkpoint(str(tmp_path / "run")).endswith("checkpoint-30")


def test_resume_refuses_other_settings_and_empty_folders(tiny_encoder_dir, data, tmp_path, capsys):
    run = tmp_path / "run"
    base = argv(tiny_encoder_dir, data, run, "--max-steps", "10", "--d-model", "32", "--n-head", "2", "--lr", "0.001")
    assert train_script.main(base) == 0
    assert train_script.main(base + ["--lr", "0.5", "--resume"]) == 2
    assert "lr 0.001 -> 0.5" in capsys.readouterr().err
    assert train_script.main(argv(tiny_encoder_dir, data, tmp_path / "empty", "--resume")) == 2
    assert "holds no checkpoint to resume" in capsys.readouterr().err
    assert train_script.main(base) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err


def test_unreachable_encoder_says_how_to_point_at_a_local_copy(data, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "train.py", "--encoder", "no-such-org/no-such-model", "--data", data,
                           "--output-dir", str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "could not load the encoder 'no-such-org/no-such-model'" in proc.stderr and "--encoder DIR" in proc.stderr


@pytest.fixture
def checkpoint(tiny_encoder_dir, data, tmp_path):
    run = tmp_path / "run"
    assert train_script.main(argv(tiny_encoder_dir, data, run, "--max-steps", "3", "--d-model", "32", "--n-head", "2")) == 0
    return run / "checkpoint-3"


@pytest.mark.parametrize("damage, message", [
    (lambda c: os.remove(c / "model.safetensors"), "has no model.safetensors"),
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000]), "is corrupt"),
    (lambda c: os.remove(c / "decoder_spm.model"), "decoder vocabulary is missing or corrupt"),
    (lambda c: (c / "decoder_spm.model").write_bytes(b"garbage"), "decoder vocabulary is missing or corrupt"),
    (lambda c: os.remove(c / "config.json"), "holds no checkpoint"),
    (lambda c: (c / "config.json").write_text((c / "config.json").read_text().replace('"d_model": 32', '"d_model": 64')),
     "does not fit its config.json"),
])
def test_damaged_checkpoints_are_refused_with_the_reason(checkpoint, damage, message):
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=message):
        ReconModel.from_pretrained(str(checkpoint))


def test_another_encoder_or_representation_is_refused(checkpoint, tmp_path, capsys):
    from transformers import BertModel
    other = tmp_path / "other-bert"  # same shape as the tiny encoder, other weights
    torch.manual_seed(123)
    src = ReconModel.from_pretrained(str(checkpoint)).encoder
    BertModel(src.model.config).save_pretrained(other)
    src.tokenizer.save_pretrained(other)
    with pytest.raises(CheckpointError, match="not the one this checkpoint was trained on"):
        ReconModel.from_pretrained(str(checkpoint), encoder=str(other))
    assert evaluate_script.main(["--checkpoint", str(checkpoint), "--representation", "mean",
                                 "--output-dir", str(tmp_path / "ev")]) == 2
    assert "decodes 'cls' vectors, not 'mean'" in capsys.readouterr().err


def test_a_split_too_small_is_an_error(tiny_encoder_dir, text_file, capsys, tmp_path):
    path = text_file(sentences(3))
    assert train_script.main(["--encoder", tiny_encoder_dir, "--data", path, "--output-dir", str(tmp_path / "r"),
                              "--cache-dir", ""]) == 2
    err = capsys.readouterr().err
    assert "split is empty" in err and "fraction" in err
