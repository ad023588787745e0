"""Where tensors live and in what precision: one autocast rule, one host-to-device copy."""

import torch


def autocast(device):
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slow and changes the numbers)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(t, device):
    """A host tensor on `device`; on CUDA through pinned memory, without blocking."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
