"""What glibc's malloc costs a training step: the default decoder's step, timed in two fresh
processes, one as Python starts (every freed block over 32 MB goes back to the kernel and is
faulted in again next step) and one after recon.device.keep_freed_memory(), as the scripts run.

    python benchmarks/allocator.py            # the default decoder, 64 sentences of 30 tokens, 1 thread
    python benchmarks/allocator.py --threads 2 --vocab-size 16000

Prints seconds per step, user and kernel CPU seconds per step and page faults per step for each,
and the ratio of the two step times. Random vectors and tokens: the cost does not depend on them.
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def one_step_costs(args):
    import torch
    import torch.nn.functional as F

    from recon.decoder import DecoderSpec
    from recon.device import keep_freed_memory

    if args.keep:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    decoder = DecoderSpec().build(384, args.vocab_size)  # the default decoder on MiniLM's 384-d vectors
    opt = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    v = torch.randn(args.batch_size, 384)
    y = torch.randint(5, args.vocab_size, (args.batch_size, args.tokens))

    def step():
        logits = decoder(v, y)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) + decoder.bow_loss(v, y, 0) / y.numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: the allocator's pools fill here
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        step()
    r1, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    n = args.steps
    return {"s_per_step": seconds / n, "user_s": (r1.ru_utime - r0.ru_utime) / n,
            "kernel_s": (r1.ru_stime - r0.ru_stime) / n, "page_faults": (r1.ru_minflt - r0.ru_minflt) / n}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tokens", type=int, default=30, help="target tokens per sentence")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)  # the child process's side
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(one_step_costs(args)))
        return 0
    rows = {}
    for name, extra in (("as Python starts", []), ("keep_freed_memory()", ["--keep"])):
        cmd = [sys.executable, __file__, "--child", *extra, *(argv if argv is not None else sys.argv[1:])]
        rows[name] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    print(f"default decoder step, batch {args.batch_size} x {args.tokens} tokens, vocabulary {args.vocab_size}, "
          f"{args.threads} thread(s), mean of {args.steps} steps\n")
    print("| malloc | s/step | user s/step | kernel s/step | page faults/step |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['s_per_step']:.3f} | {r['user_s']:.3f} | {r['kernel_s']:.3f} | {r['page_faults']:,.0f} |")
    a, b = rows.values()
    print(f"\nstep time ratio (as Python starts / keep_freed_memory): {a['s_per_step'] / b['s_per_step']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
