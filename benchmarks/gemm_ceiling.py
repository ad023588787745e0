"""How much of the device's bf16 peak can a decoder of this width reach at all? Its matrix multiplies alone, timed.

A decoder's model FLOPs (recon/speed.py) are almost all the matrix multiplies of its linear layers:
per layer the attention's input (D x 3D) and output (D x D) projections and the feed-forward pair
(D x F, F x D), and once the output layer (D x V). This times exactly those multiplies, forward and
backward in bf16, on N tokens at a time (a batch's real tokens: batch x mean length), with nothing
else: no attention scores, norms, activations' memory traffic, optimizer or Python between them. What
it reaches is a ceiling on the MFU of any implementation of that decoder at that N, recon's or
another's; train.py's MFU beside it says how much of the gap is the shapes and how much the rest.

    python benchmarks/gemm_ceiling.py --device cuda --d-model 512 --n-layer 8 --tokens 7000,28000,112000
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.speed import peak_flops  # noqa: E402


def linear_stack(d_model, n_layer, d_ff, vocab_size):
    """The (in, out) shape of every linear layer of one forward pass, in order."""
    layer = [(d_model, 3 * d_model), (d_model, d_model), (d_model, d_ff), (d_ff, d_model)]
    return layer * n_layer + [(d_model, vocab_size)]


def time_gemms(shapes, tokens, device, dtype, repeats, warmup=3):
    """Seconds a forward and backward pass of every multiply takes on `tokens` rows; its FLOPs."""
    g = torch.Generator(device="cpu").manual_seed(0)
    weights = [(torch.randn(o, i, generator=g) * i ** -0.5).to(device, dtype).requires_grad_() for i, o in shapes]
    inputs = {i: torch.randn(tokens, i, generator=g).to(device, dtype).requires_grad_() for i, _ in shapes}

    def once():
        for (i, _), w in zip(shapes, weights):
            y = inputs[i] @ w.t()  # forward: tokens x in x out
            y.backward(torch.ones_like(y))  # backward: the input's and the weight's gradients
    for _ in range(warmup):
        once()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    flops = 6 * tokens * sum(i * o for i, o in shapes)  # 2 forward + 4 backward per weight and token
    return seconds, flops


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=0, help="0: 4 x --d-model, as the decoder")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--tokens", default="7000,28000,112000",
                   help="comma-separated token counts (a batch's real tokens: batch 256 of the big corpus ~7k)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak (default: recon's table; CPU: none)")
    p.add_argument("--output", default=None, help="write the figures as JSON here too")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = linear_stack(args.d_model, args.n_layer, args.d_ff or 4 * args.d_model, args.vocab_size)
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.dtype}: {len(shapes)} multiplies of a "
          f"{args.d_model}-wide {args.n_layer}-layer decoder (vocabulary {args.vocab_size}), forward and backward")
    print("\n| tokens at once | seconds a pass | TFLOP/s | % of bf16 peak |\n|---:|---:|---:|---:|")
    rows = []
    for n in (int(x) for x in args.tokens.split(",")):
        seconds, flops = time_gemms(shapes, n, device, dtype, args.repeats)
        tflops = flops / seconds / 1e12
        pct = 100 * flops / seconds / peak if peak else None
        rows.append({"tokens": n, "seconds": seconds, "tflops": tflops, "percent_of_peak": pct})
        print(f"| {n:,} | {seconds:.5f} | {tflops:.1f} | {f'{pct:.1f}' if pct is not None else 'n/a'} |", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
