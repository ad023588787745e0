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


def keep_freed_memory(threshold=1 << 30):
    """Ask glibc's malloc to keep freed blocks of up to `threshold` bytes for reuse instead of
    handing them back to the kernel. By default it unmaps every block over 32 MB when it is freed,
    so the (batch, positions, vocabulary) tensors of each training step are faulted in afresh:
    on the 2-core CPU machine that was 0.5 s of kernel time per default step. Called by the
    scripts' main(), never on import; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold) and libc.mallopt(M_TRIM_THRESHOLD, threshold))
