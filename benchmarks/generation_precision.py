"""What generation's precision costs and changes: a trained checkpoint decodes the same vectors (its
run's validation sentences, encoded once) in fp32 and under bf16 autocast, alternately, in one process,
greedily and with the beam search its run evaluated with (the rerank's re-encoding left out: it
follows --encoder-precision). It prints sentences a second for each, their ratio, the share of
sentences written the same in both, and each precision's corpus BLEU against the references (a
check, not a result: evaluate.py on the validation split is the measurement). A CPU generates in fp32 by
default; `--generation-precision auto` chooses bf16 where it multiplies bf16 natively (docs/speed.md).

    python benchmarks/generation_precision.py --checkpoint checkpoints/default
    python benchmarks/generation_precision.py --checkpoint checkpoints/default --sentences 128 --threads 1
"""

import argparse
import statistics

import sacrebleu
import torch

from benchmark import timed, validation_decoding  # benchmarks/benchmark.py
from recon.device import cpu_has_bf16, keep_freed_memory


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/default", help="a checkpoint or run folder")
    p.add_argument("--sentences", type=int, default=511, help="the first N of its validation split")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each precision, alternating")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    keep_freed_memory()  # as train.py and evaluate.py run
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder, model, texts, vectors, settings = validation_decoding(args.checkpoint, args.sentences, device)
    print(f"{folder}: {len(texts)} validation sentences, {torch.get_num_threads()} threads, device {device}"
          + (f" (bf16 native on this CPU: {cpu_has_bf16()})" if device.type == "cpu" else ""))

    def run(precision, gen):
        model.set_precisions(generation=precision)
        out, seconds = timed(lambda: model.decode_rows(vectors, **gen), device)
        return (out[0] if gen.get("return_all") else out), seconds

    for name, gen in settings.items():
        run("fp32", gen), run("bf16", gen)  # warm-up
        seconds, outputs = {"fp32": [], "bf16": []}, {}
        for _ in range(args.repeats):
            for precision in seconds:
                outputs[precision], s = run(precision, gen)
                seconds[precision].append(s)
        med = {k: statistics.median(v) for k, v in seconds.items()}
        same = sum(a == b for a, b in zip(outputs["fp32"], outputs["bf16"])) / len(texts)
        bleu = {k: sacrebleu.corpus_bleu(v, [texts]).score for k, v in outputs.items()}
        print(f"{name}: " + ", ".join(f"{k} {len(texts) / med[k]:.1f} sentences/s (median of {args.repeats}: "
                                      f"{med[k]:.2f} s), BLEU {bleu[k]:.2f}" for k in seconds)
              + f"; bf16 / fp32 speed {med['fp32'] / med['bf16']:.2f}x; written the same: {100 * same:.1f}%")


if __name__ == "__main__":
    main()
