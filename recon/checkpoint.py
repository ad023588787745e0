"""Run folders and atomic checkpoints: the one place that knows their layout.

A run folder holds checkpoint-<step>/ folders, metrics.jsonl, data.json and the evaluation, and
while a run writes it, a .lock that keeps a second run out. Each checkpoint is written to a
temporary folder and renamed into place, so a crash mid-save leaves the previous one intact.
A checkpoint folder holds:
  config.json         ReconConfig: everything needed to rebuild the model
  model.safetensors   the decoder, plus the encoder when it was trained or randomly initialised
  decoder_spm.model   the decoder's SentencePiece vocabulary (or decoder_tokenizer/)
  meta.json           resolved arguments, git commit, step, validation metrics, data hashes
  trainer_state.pt    what resuming needs (optimizer, scheduler, step, RNG); tensors only
"""

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import torch

from recon.errors import ReconError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
TRAINER_STATE_FILE = "trainer_state.pt"
LOG_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


class CheckpointError(ReconError):
    pass


class RunFolderBusy(ReconError):
    pass


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def checkpoint_step(name):
    """checkpoint-120 -> 120; anything else -> None."""
    prefix = "checkpoint-"
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


def is_complete(folder):
    """A checkpoint that loads: its config and weights are there (save_checkpoint writes the
    rest in the same atomic rename)."""
    return all(os.path.isfile(os.path.join(folder, f)) for f in (CONFIG_FILE, WEIGHTS_FILE))


def list_checkpoints(run_dir):
    """Steps of the complete checkpoints in run_dir, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(s for n in os.listdir(run_dir) if (s := checkpoint_step(n)) is not None
                  and is_complete(os.path.join(run_dir, n)))


def resolve_checkpoint(path):
    """A checkpoint folder as given (anything with a config; loading says what else is missing),
    or a run folder's chosen checkpoint: the best one of a run with early stopping (its newest
    checkpoint's meta.json names it), else the newest complete checkpoint-N."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint at {path}: the folder does not exist")
    steps = list_checkpoints(path)
    if not steps:
        raise CheckpointError(f"{path} holds no checkpoint (no {CONFIG_FILE}, no checkpoint-N folder)")
    best = (load_meta(os.path.join(path, f"checkpoint-{steps[-1]}")).get("early_stopping") or {}).get("best_step")
    return os.path.join(path, f"checkpoint-{best if best in steps else steps[-1]}")


def _fsync_tree(folder):
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(run_dir, step, model, meta, trainer_state=None, keep=2, protect=()):
    """Write run_dir/checkpoint-<step> atomically; keep the newest `keep` checkpoints, and those
    of the steps in `protect`."""
    final = os.path.join(run_dir, f"checkpoint-{step}")
    tmp = os.path.join(run_dir, f".tmp-checkpoint-{step}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    with open(os.path.join(tmp, META_FILE), "w") as f:
        json.dump({**meta, "step": step}, f, indent=2)
    if trainer_state is not None:
        torch.save(trainer_state, os.path.join(tmp, TRAINER_STATE_FILE))
    _fsync_tree(tmp)
    if os.path.exists(final):  # the same step saved again (resumed run): swap, then drop the old
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    for stale in list_checkpoints(run_dir)[:-keep]:
        if stale not in protect:
            shutil.rmtree(os.path.join(run_dir, f"checkpoint-{stale}"))
    return final


def load_meta(folder):
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_trainer_state(folder, device):
    return torch.load(os.path.join(folder, TRAINER_STATE_FILE), map_location=device, weights_only=True)


def resumable(folder):
    return os.path.isfile(os.path.join(folder, TRAINER_STATE_FILE)) and "args" in load_meta(folder)


def truncate_log(run_dir, step):
    """Drop log lines written after `step` (by a run that died after its last checkpoint)."""
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(keep)


def append_log(run_dir, record):
    with open(os.path.join(run_dir, LOG_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def holds_a_run(run_dir):
    return bool(list_checkpoints(run_dir)) or os.path.exists(os.path.join(run_dir, LOG_FILE))


def clear_run_dir(run_dir):
    """Remove what an earlier run wrote (--overwrite), keeping this run's lock."""
    for name in os.listdir(run_dir):
        if name != LOCK_FILE:
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


class RunLock:
    """One writer per run folder: an exclusive flock on run_dir/.lock. The kernel drops it when
    the process ends, however it ends; release() also removes the file. A second run, or a resume
    while the first still writes, is refused with the holder named."""

    def __init__(self, run_dir):
        self.run_dir, self.made = run_dir, not os.path.isdir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, LOCK_FILE)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "a process"
                os.close(fd)
                raise RunFolderBusy(
                    f"{run_dir} is being written by another run ({holder}); wait for it to end, or "
                    "choose another --output-dir or --run-name") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file that its holder removed while we waited for it
                break
            os.close(fd)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}: "
                     f"{' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}\n".encode())
        self.fd = fd

    def release(self):
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self.made and not os.listdir(self.run_dir):  # a run that wrote nothing leaves no folder
            os.rmdir(self.run_dir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
