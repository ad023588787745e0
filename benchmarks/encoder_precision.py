"""What the encoder's precision costs and changes: the frozen default encoder (all-MiniLM-L6-v2 [CLS])
encodes the same sentences of the default corpus in fp32 and under bf16 autocast, alternately, in one
process; it prints sentences a second for each, their ratio, and how far the bf16 vectors lie from the
fp32 ones (cosine of the vectors standardised as the decoder standardises them), beside the cosine of
two different sentences' vectors for scale. `--encoder-precision auto` (the default of train.py,
evaluate.py and the probes) chooses bf16 where the hardware multiplies bf16 natively.

    python benchmarks/encoder_precision.py                  # 4,096 sentences, torch's threads
    python benchmarks/encoder_precision.py --threads 1 --sentences 2048
"""

import argparse
import statistics

import torch
import torch.nn.functional as F

from benchmark import timed  # benchmarks/benchmark.py: synchronised wall time
from recon.data import DataConfig
from recon.device import cpu_has_bf16
from recon.encoder import EncoderSpec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each precision, alternating")
    p.add_argument("--batch-size", type=int, default=256, help="as train.py's --eval-batch-size")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = EncoderSpec()
    encoder = spec.build().to(device).eval()
    corpus = DataConfig().build(encoder.count_tokens, spec.max_length)
    texts = corpus.texts("train", copies=False)[:args.sentences]
    print(f"{len(texts)} sentences of the default corpus, batch {args.batch_size}, {torch.get_num_threads()} "
          f"threads, device {device}" + (f" (bf16 native on this CPU: {cpu_has_bf16()})" if device.type == "cpu" else ""))

    def run(precision):
        encoder.precision = precision
        return timed(lambda: encoder.encode(texts, args.batch_size).float(), device)

    run("fp32"), run("bf16")  # warm-up
    seconds = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision in seconds:
            vectors, s = run(precision)
            seconds[precision].append(s)
            if precision == "fp32":
                v32 = vectors
            else:
                v16 = vectors
    med = {k: statistics.median(v) for k, v in seconds.items()}
    for k in seconds:
        print(f"{k}: {len(texts) / med[k]:.0f} sentences/s (median of {args.repeats}: {med[k]:.2f} s)")
    print(f"bf16 / fp32 speed: {med['fp32'] / med['bf16']:.2f}x")
    mean, std = v32.mean(0), v32.std(0)
    z32, z16 = (v32 - mean) / std, (v16 - mean) / std
    same = F.cosine_similarity(z32, z16, dim=-1)
    other = F.cosine_similarity(z32, z32[torch.randperm(len(z32), generator=torch.Generator().manual_seed(0))], dim=-1)
    print(f"standardised cosine, bf16 against fp32 vectors of the same sentence: mean {same.mean():.5f}, "
          f"min {same.min():.5f}; of two different sentences (fp32): mean {other.mean():.3f}")


if __name__ == "__main__":
    main()
