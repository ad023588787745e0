"""Where tensors live and in what precision: one autocast rule, one host-to-device copy."""

import torch


# --precision of the training step: auto is bf16 where the hardware multiplies bf16 natively (CUDA; a
# CPU with AVX512-BF16 or AMX), fp32 elsewhere, where bf16 is emulated and slower than fp32;
# bf16-cuda-only is what runs did before the flag existed
PRECISIONS = ("auto", "bf16", "fp32", "bf16-cuda-only")


def cpu_has_bf16():
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(precision, device):
    """The precision a training step runs in on `device`: bf16 or fp32."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    if precision == "bf16-cuda-only":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device, precision="bf16-cuda-only"):
    """bf16 autocast in the given precision (resolve_precision); by default, on CUDA only (the
    validation loss; the encoder's passes follow Encoder.precision, --encoder-precision, and
    generation Decoder.generation_precision, --generation-precision)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")


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
