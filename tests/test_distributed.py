"""torchrun with 2 gloo processes on CPU: the same losses as one process with the same global
batch, and a sharded evaluation that gathers every example exactly once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from safetensors.torch import load_file

from conftest import sentences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def torchrun(n, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *args]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_encoder_dir):
    """The same training, once as one process and once as 2 DDP processes over gloo."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "data.txt"
    data.write_text("\n".join(sentences(400)) + "\n")
    args = ["--encoder", tiny_encoder_dir, "--data", str(data), "--max-steps", "20", "--batch-size", "16",
            "--d-model", "32", "--n-layer", "1", "--n-head", "2", "--vocab-size", "400", "--dropout", "0",
            "--eval-steps", "10", "--validation-fraction", "0.1", "--test-fraction", "0.1", "--cache-dir", "",
            "--device", "cpu", "--precision", "fp32",  # bf16 rounds differently for a half batch
            "--optimizer", "adamw"]  # and so does Muon's orthogonalisation (bf16): the test below
    run([sys.executable, "train.py", *args, "--output-dir", str(tmp / "one")], tmp)
    out = run(torchrun(2, "train.py", *args, "--output-dir", str(tmp / "two")), tmp)
    return tmp, out


def test_two_processes_train_like_one_with_the_same_global_batch(two_runs):
    tmp, out = two_runs
    one, two = read_jsonl(tmp / "one" / "metrics.jsonl"), read_jsonl(tmp / "two" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [10, 20]  # rank 0 alone wrote the log
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert a["tokens_seen"] == b["tokens_seen"]  # the global batch, not one process's share
    w1 = load_file(tmp / "one" / "checkpoint-20" / "model.safetensors")
    w2 = load_file(tmp / "two" / "checkpoint-20" / "model.safetensors")
    assert w1.keys() == w2.keys()  # saved unwrapped: no DDP "module." prefix
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() < 1e-4, k
    meta = json.loads((tmp / "two" / "checkpoint-20" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert out.stdout.count("test split (") == 1  # one process printed the report


def test_two_processes_train_like_one_under_muon_to_its_rounding(tmp_path, tiny_encoder_dir):
    """Muon orthogonalises each update in bf16 (torch.optim.Muon), which rounds the two processes' summed
    gradient and the one process's apart by a bf16 step: the same training, to that rounding."""
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(400)) + "\n")
    args = small_args(tiny_encoder_dir, data, "--max-steps", "20", "--dropout", "0", "--eval-steps", "10",
                      "--validation-fraction", "0.1", "--test-fraction", "0.1", "--precision", "fp32",
                      "--optimizer", "muon")
    run([sys.executable, "train.py", *args, "--output-dir", str(tmp_path / "one")], tmp_path)
    run(torchrun(2, "train.py", *args, "--output-dir", str(tmp_path / "two")), tmp_path)
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [10, 20]
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)
    w1 = load_file(tmp_path / "one" / "checkpoint-20" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "checkpoint-20" / "model.safetensors")
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() < 1e-3, k


def test_sharded_final_evaluation_has_every_test_example_once(two_runs):
    tmp, _ = two_runs
    one = read_jsonl(tmp / "one" / "eval-test" / "predictions.jsonl")
    two = read_jsonl(tmp / "two" / "eval-test" / "predictions.jsonl")
    n_test = json.loads((tmp / "one" / "data.json").read_text())["test_texts"]
    assert len(one) == len(two) == n_test
    assert [r["reference"] for r in two] == [r["reference"] for r in one]  # the same examples, same order
    for r in two:
        assert r["control_shuffled_prediction"] is not None and r["control_random_prediction"] is not None


WORKER = """
import json, sys
import torch
from recon import distributed
distributed.setup("cpu")
rank = distributed.rank()
seen = []

def fn(items):
    seen.extend(items if isinstance(items, list) else items[:, 0].tolist())
    return [x * 10 for x in items] if isinstance(items, list) else items * 10

n = int(sys.argv[2])
as_list = distributed.sharded(fn, list(range(n)))
as_tensor = distributed.sharded(fn, torch.arange(n * 3, dtype=torch.float32).view(n, 3))
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"seen": seen, "list": as_list, "tensor": as_tensor.tolist()}, f)
distributed.cleanup()
"""


@pytest.mark.parametrize("n", [7, 1])
def test_sharded_gathers_every_item_once_in_order(tmp_path, n):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    run(torchrun(2, str(script), str(tmp_path), str(n)), tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # rank r computed items r, r+2, ... and nothing else (with 1 item rank 1 had none)
    for r, got in enumerate((r0, r1)):
        mine = list(range(r, n, 2))
        assert got["seen"] == mine + [3 * i for i in mine]
    for r in (r0, r1):  # every process gets all results back, in the original order
        assert r["list"] == [10 * i for i in range(n)]
        assert r["tensor"] == [[10.0 * (3 * i + j) for j in range(3)] for i in range(n)]


def test_evaluate_py_under_torchrun_writes_one_report_with_every_example(two_runs):
    tmp, _ = two_runs
    out = run(torchrun(2, "evaluate.py", "--checkpoint", str(tmp / "one"), "--output-dir", str(tmp / "ev2"),
                       "--num-beams", "2", "--device", "cpu"), tmp)
    rows = read_jsonl(tmp / "ev2" / "predictions.jsonl")
    ref = read_jsonl(tmp / "one" / "eval-test" / "predictions.jsonl")
    assert [r["reference"] for r in rows] == [r["reference"] for r in ref]
    assert json.loads((tmp / "ev2" / "metrics.json").read_text())["decoding"]["num_beams"] == 2
    assert out.stdout.count("test split of") == 1


def small_args(tiny_encoder_dir, data, *extra):
    return ["--encoder", tiny_encoder_dir, "--data", str(data), "--batch-size", "16", "--d-model", "32",
            "--n-layer", "1", "--n-head", "2", "--vocab-size", "400", "--no-eval", "--cache-dir", "",
            "--device", "cpu", *extra]


def test_torchrun_resume_continues_with_each_process_random_state(tmp_path, tiny_encoder_dir):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    args = small_args(tiny_encoder_dir, data, "--max-steps", "20", "--save-steps", "10", "--dropout", "0.2")
    run(torchrun(2, "train.py", *args, "--output-dir", str(tmp_path / "a")), tmp_path)
    shutil.copytree(tmp_path / "a" / "checkpoint-10", tmp_path / "b" / "checkpoint-10")
    run(torchrun(2, "train.py", *args, "--output-dir", str(tmp_path / "b"), "--resume"), tmp_path)
    a, b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert b[-1]["step"] == a[-1]["step"] == 20
    assert b[-1]["train_loss"] == pytest.approx(a[-1]["train_loss"], rel=1e-6)  # dropout draws included


AFTER_TRAIN = """
import gc, json, os, sys
sys.path.insert(0, sys.argv[1])
import train
from torch.nn.parallel import DistributedDataParallel
from recon import distributed
code = train.main(sys.argv[3:])  # ends the process group, as `python train.py` does
alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
with open(f"{sys.argv[2]}/rank{os.environ['RANK']}.json", "w") as f:
    json.dump({"code": code, "ddp_alive": alive, "grouped": distributed.is_distributed()}, f)
"""


def test_train_ends_with_no_ddp_wrapper_left_holding_the_destroyed_group(tmp_path, tiny_encoder_dir):
    # a DDP wrapper still alive at interpreter exit once aborted a finished torchrun run in CI (exit -6)
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    script = tmp_path / "after_train.py"
    script.write_text(textwrap.dedent(AFTER_TRAIN))
    args = small_args(tiny_encoder_dir, data, "--max-steps", "4", "--output-dir", str(tmp_path / "run"))
    run(torchrun(2, str(script), ROOT, str(tmp_path), *args), tmp_path)
    for r in (0, 1):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == {"code": 0, "ddp_alive": 0, "grouped": False}


def test_sigterm_under_torchrun_saves_once_and_stops_every_process(tmp_path, tiny_encoder_dir):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    out = tmp_path / "run"
    args = small_args(tiny_encoder_dir, data, "--max-steps", "100000", "--output-dir", str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(torchrun(2, "train.py", *args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    log, _ = proc.communicate(timeout=120)
    kept = [n for n in os.listdir(out) if n.startswith("checkpoint-")]
    assert len(kept) == 1, (kept, log[-3000:])
    step = int(kept[0].split("-")[1])
    assert step % 10 == 0 and step < 100000  # saved at an agreed 10-step check
    assert read_jsonl(out / "metrics.jsonl")[-1]["step"] == step
    assert "continue with the same command and --resume" in log
