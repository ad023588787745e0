"""Run folders and atomic checkpoints.

A run folder holds checkpoint-<step>/ folders, metrics.jsonl, data.json and the evaluation.
Each checkpoint is written to a temporary folder and renamed into place, so a crash mid-save
leaves the previous checkpoint intact. Inside a checkpoint, beside what ReconModel saves:
  meta.json         resolved arguments, git commit, step, validation metrics, data hashes
  trainer_state.pt  what resuming needs (optimizer, scheduler, step, RNG); tensors only
"""

import json
import os
import shutil
import subprocess

import torch

from recon.model import checkpoint_step

META_FILE = "meta.json"
TRAINER_STATE_FILE = "trainer_state.pt"


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _fsync_tree(folder):
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(run_dir, step, model, meta, trainer_state=None, keep=2):
    """Write run_dir/checkpoint-<step> atomically; keep the newest `keep` checkpoints."""
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
        shutil.rmtree(os.path.join(run_dir, f"checkpoint-{stale}"))
    return final


def list_checkpoints(run_dir):
    """Steps of the complete checkpoints in run_dir, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(s for n in os.listdir(run_dir) if (s := checkpoint_step(n)) is not None
                  and os.path.isfile(os.path.join(run_dir, n, META_FILE)))


def load_meta(folder):
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
