"""Data-parallel helpers: the torchrun environment, rank 0's privileges, and sharded evaluation.

`torchrun --nproc_per_node N train.py ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` reads
them and starts the process group (NCCL on GPUs, gloo on CPU). Without them everything here is
a no-op and recon runs as one process.
"""

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name="auto"):
    """Start the process group when launched by torchrun; return this process's device.

    device_name: "auto", "cpu", "cuda" (each process takes the GPU of its LOCAL_RANK), or "cuda:i"
    (only for one process).
    """
    if not launched_by_torchrun():
        if device_name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL and object collectives use the current device
    else:
        device = torch.device("cpu")
    if not is_distributed():
        # a generous timeout: rank 0 alone trains the tokenizer and encodes the corpus while the others wait
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=60))
    return device


def cleanup():
    """End the process group. The DDP wrapper of a finished run sits in reference cycles (the trainer
    and its hooks) and holds the group; collected only at interpreter exit, after the group was
    destroyed, gloo's threads could be torn down mid-finalisation and abort the process ("terminate
    called without an active exception", exit -6) after a run that had finished. Collect it first."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj):
    """[rank 0's obj, rank 1's obj, ...] on every rank."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(values, device):
    """Sum a list of floats over ranks (one collective)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sharded(fn, items):
    """fn(items) computed in shards: rank r takes items r, r+W, r+2W, ...; every rank gets the whole
    result back in the original order, each item exactly once (no padding, so no duplicates).

    items: a list or a tensor (sharded on dim 0); fn returns a list or a tensor of the same length.
    """
    if not is_distributed():
        return fn(items)
    r, w = rank(), world_size()
    share = items[r::w]
    mine = fn(share) if len(share) else None  # fewer items than processes: nothing to do here
    if isinstance(mine, torch.Tensor):
        mine = mine.cpu()
    parts = [None] * w
    dist.all_gather_object(parts, mine)
    done = [p for p in parts if p is not None]
    if done and isinstance(done[0], torch.Tensor):
        out = torch.empty((len(items), *done[0].shape[1:]), dtype=done[0].dtype)
    else:
        out = [None] * len(items)
    for i, part in enumerate(parts):
        if part is not None:
            out[i::w] = part
    return out
