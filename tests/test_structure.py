"""The shape of the code that users meet: old checkpoints and run folders still work, a mistyped
flag is a usage error, one run writes a folder at a time, progress reads well in a log file, and a
second decoder class plugs in through its spec."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import train as train_script
from conftest import sentences
from recon import ReconModel
from recon.checkpoint import RunFolderBusy, RunLock
from recon.config import TrainConfig, parse
from recon.decoder import Decoder, register_decoder
from recon.spec import with_unrecorded
from recon.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = os.path.join("tests", "fixtures", "old_checkpoint")  # written by commit bacd761: see make.py there
TINY = ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--batch-size", "16", "--vocab-size", "400",
        "--validation-fraction", "0.1", "--test-fraction", "0.1", "--cache-dir", ""]


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the fixture's configs record their encoder and data relative to the root
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as make.py ran: another thread count sums in another order
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["frozen", "scratch"])
def test_checkpoints_of_the_old_code_load_and_decode_the_same(in_root, name):
    expected = json.loads(open(os.path.join(OLD, "expected.json")).read())
    tensors = load_file(os.path.join(OLD, "expected.safetensors"))
    model = ReconModel.from_pretrained(os.path.join(OLD, name))  # the run folder: its newest checkpoint
    assert model.encoder.precision == "bf16-cuda-only"  # encodes as runs before --encoder-precision did
    texts = expected["texts"]
    vectors = model.encode(texts)
    # the same up to float rounding: on torch 2.13 / transformers 5.24 the vectors differ from the
    # stored ones by 6e-7 and the logits by 1e-6 (the landed code too); the same text exactly
    torch.testing.assert_close(vectors, tensors[f"{name}.vectors"], rtol=1e-4, atol=1e-5)
    vectors = tensors[f"{name}.vectors"]
    y = torch.tensor([[5, 6, 7, model.config.eos_id]] * len(texts))
    with torch.no_grad():
        torch.testing.assert_close(model.decoder(vectors, y), tensors[f"{name}.logits"], rtol=1e-4, atol=1e-5)
    assert model.generate_from_vectors(vectors) == expected[name]["greedy"]
    assert model.generate_from_vectors(vectors, num_beams=3) == expected[name]["beam3"]
    assert model.reconstruct(texts) == expected[name]["greedy"]  # through the encoder too


@pytest.mark.parametrize("name", ["frozen", "scratch"])
def test_a_run_of_the_old_code_resumes_to_the_same_weights(in_root, tmp_path, name):
    run = tmp_path / name
    shutil.copytree(os.path.join(OLD, name), run)
    shutil.rmtree(run / "checkpoint-40")
    args = json.loads((run / "checkpoint-20" / "meta.json").read_text())["args"]  # the old code's flags
    train(TrainConfig(**{**with_unrecorded(args), "output_dir": str(run), "resume": "auto"}), log=lambda *a: None)
    new = load_file(run / "checkpoint-40" / "model.safetensors")
    old = load_file(os.path.join(OLD, name, "checkpoint-40", "model.safetensors"))
    assert new.keys() == old.keys()
    for k in old:  # float rounding: 3e-6 at most in near-zero biases on torch 2.13 / transformers 5.24
        torch.testing.assert_close(new[k], old[k], rtol=1e-4, atol=1e-5)
    with open(os.path.join(OLD, name, "metrics.jsonl")) as f:
        want = [json.loads(line) for line in f]
    got = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["train_loss"] for r in got] == pytest.approx([r["train_loss"] for r in want], rel=1e-5)


def test_a_mistyped_flag_is_a_usage_error_naming_the_closest(capsys, tmp_path):
    assert train_script.main(["--max-step", "5"]) == 2  # a prefix of --max-steps is not taken for it
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and len(err.strip().splitlines()) == 2
    assert "unrecognized arguments: --max-step 5" in err and "did you mean --max-steps" in err
    path = tmp_path / "run.yaml"
    path.write_text("max_step: 5\n")
    assert train_script.main([str(path)]) == 2
    assert "did you mean max_steps" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "train.py", "--bogus-flag", "1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "unrecognized arguments: --bogus-flag 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_writer_per_run_folder(tmp_path):
    run = tmp_path / "run"
    with RunLock(str(run)):
        assert (run / ".lock").read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(RunFolderBusy, match=f"being written by another run \\(pid {os.getpid()} "):
            RunLock(str(run))
    assert not run.exists()  # a run that wrote nothing leaves nothing behind
    with RunLock(str(run)):  # released: the next run takes it
        pass


def test_a_second_train_py_in_the_same_folder_is_refused_while_the_first_runs(tiny_encoder_dir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    run = tmp_path / "run"
    argv = [sys.executable, "train.py", "--encoder", tiny_encoder_dir, "--data", str(data), "--output-dir", str(run),
            "--no-eval", "--eval-steps", "100000", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv + ["--max-steps", "1000000"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (run / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() - t0 < 120, "the first run did not start training"
            time.sleep(0.05)
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = subprocess.run(argv + ["--max-steps", "1000000", *extra], cwd=ROOT, env=env,
                                    capture_output=True, text=True)
            assert second.returncode == 2, second.stderr[-2000:]
            assert f"being written by another run (pid {first.pid} " in second.stderr
    finally:
        first.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock
        first.wait()
    with RunLock(str(run)):
        pass


def test_progress_in_a_log_file_is_plain_lines(tiny_encoder_dir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    proc = subprocess.run([sys.executable, "train.py", "--encoder", tiny_encoder_dir, "--data", str(data),
                           "--output-dir", str(tmp_path / "run"), "--max-steps", "20", *TINY],
                          cwd=ROOT, capture_output=True, text=True)  # stderr is a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert "training: 20/20" in proc.stderr
    assert len(proc.stderr.splitlines()) < 20  # a handful of lines, not one per update


@register_decoder("test-mlp-prefix")
class MLPPrefixDecoder(Decoder):
    """A second decoder class, as a new one would be written: its own file (here, this test), one
    registration, nothing edited elsewhere. The vector reaches the prefix through a small MLP."""

    def __init__(self, spec, vector_dim, vocab_size):
        super().__init__(spec, vector_dim, vocab_size)
        self.prefix = nn.Sequential(nn.Linear(vector_dim, spec.d_model), nn.GELU(),
                                    nn.Linear(spec.d_model, spec.num_prefix * spec.d_model))


def test_a_registered_decoder_class_trains_saves_and_loads(tiny_encoder_dir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(200)) + "\n")
    cfg = parse(TrainConfig, ["--encoder", tiny_encoder_dir, "--data", str(data), "--output-dir", str(tmp_path / "run"),
                              "--max-steps", "6", "--decoder-type", "test-mlp-prefix", "--no-eval", *TINY])
    model, run, _ = train(cfg, log=lambda *a: None)
    assert isinstance(model.decoder, MLPPrefixDecoder)
    loaded = ReconModel.from_pretrained(run)
    assert loaded.config.decoder_type == "test-mlp-prefix" and isinstance(loaded.decoder, MLPPrefixDecoder)
    texts = sentences(3, seed=5)
    assert loaded.reconstruct(texts) == model.eval().reconstruct(texts)
    with pytest.raises(Exception, match="--decoder-type must be one of"):
        parse(TrainConfig, ["--decoder-type", "no-such-decoder"]).decoder_spec.build(4, 10)


def test_import_recon_registers_every_decoder_class():
    # a checkpoint of any class must load after `from recon import ReconModel` alone, in a fresh process
    code = "import recon, recon.decoder as d; print(' '.join(sorted(d.DECODERS)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["corrector", "encoder-warm", "transformer"]
