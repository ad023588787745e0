"""Throughput bookkeeping: padding, model FLOPs and model FLOPs utilisation (MFU).

MFU = the decoder's model FLOPs per second / the device's dense bf16 peak. Model FLOPs count the
real (non-padding) tokens only, forward and backward (x3 the forward), as in the PaLM paper's
appendix B and nanoGPT's estimate_mfu; a fine-tuned encoder's FLOPs are not counted.
"""

import torch

# dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, in FLOP/s; first match wins
BF16_PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A10G", 70e12), ("A10", 125e12), ("L40S", 362e12), ("L4", 121e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12),
)


def peak_flops(device, override_tflops=0.0):
    """The device's dense bf16 peak in FLOP/s, or None when unknown (CPU, an unlisted GPU)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in BF16_PEAK_FLOPS if key in name), None)


def transformer_flops_per_token(matmul_params, n_layer, d_model, seq_len):
    """Forward + backward FLOPs of one token: 6 per weight of every matrix multiply, plus the
    attention scores and weighted sums, 12 * L * D * T."""
    return 6 * matmul_params + 12 * n_layer * d_model * seq_len


def padding_fraction(lengths_per_batch):
    """Share of padded positions over batches given as lists of sequence lengths."""
    real = sum(sum(b) for b in lengths_per_batch)
    total = sum(len(b) * max(b) for b in lengths_per_batch)
    return 1 - real / max(total, 1)
