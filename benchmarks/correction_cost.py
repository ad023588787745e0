"""What iterative correction costs a sentence: `--steps` steps with a sequence beam of `--beam`, timed.

The corrector is warm-started from the base checkpoint's decoder (recon/corrector.py's warm_start,
what `train.py --base-model` starts from); its own parts are untrained, so what it writes is not a
result, only the work it does: each step decodes every candidate with a beam of `--beam` and
re-encodes the candidates, as `evaluate.py --correction-steps N --correction-beam K` does with a
trained corrector. The cost depends on how long the candidates are: the table gives their mean
length beside the references'. Compare: the vec2text reproduction cited in issue 13 spent 13,344 s
on 500 sentences at 50 steps and beam 8, 26.7 s a sentence.

    python benchmarks/correction_cost.py --base checkpoints/default --texts checkpoints/default/eval-test/predictions.jsonl
    python benchmarks/correction_cost.py --base RUN --texts RUN/eval-test/predictions.jsonl --sentences 128 --steps 50 --beam 8 --device cuda
"""

import argparse
import json
import time
from dataclasses import replace

import torch

from recon.corrector import correct, warm_start
from recon.model import ReconModel

VEC2TEXT_SECONDS = 13344 / 500  # a sentence, 50 steps, beam 8 (the reproduction cited in issue 13)


def read_texts(path, n):
    """The first n texts of a file: predictions.jsonl (its references) or one text a line."""
    with open(path) as f:
        if path.endswith(".jsonl"):
            texts = [json.loads(line)["reference"] for line in f if line.strip()]
        else:
            texts = [line.strip() for line in f if line.strip()]
    if len(texts) < n:
        raise SystemExit(f"{path} holds {len(texts)} texts, fewer than --sentences {n}: give more or ask for fewer")
    return texts[:n]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a base run (folder or checkpoint) whose decoder the corrector starts from")
    p.add_argument("--texts", required=True, help="predictions.jsonl (its references) or a text file, one a line")
    p.add_argument("--sentences", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--beam", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1024, help="rows decoded and texts encoded at once")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-seconds", type=float, default=0.0,
                   help="start no step after this many seconds of correction (0: none); the figures are of the steps done")
    p.add_argument("--output", default="correction_cost.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    base = ReconModel.from_pretrained(args.base, device=device)
    spec = replace(base.config.decoder_spec, decoder_type="corrector")
    model = ReconModel.from_encoder(base.encoder, base.tokenizer, base.config.encoder_spec, spec,
                                    base_model=base.folder)
    warm_start(model.decoder, base.decoder)
    model.attach_base(base)
    model.to(device).eval()

    texts = read_texts(args.texts, args.sentences)
    t0 = time.time()
    vectors = base.encode(texts, args.batch_size)
    t_encode = time.time() - t0
    log = lambda line: print(line, flush=True)
    outputs, seconds = correct(model, vectors, args.steps, beam=args.beam, batch_size=args.batch_size, log=log,
                               max_seconds=args.max_seconds)
    n, steps_s, done = len(texts), sum(seconds[1:]), len(seconds) - 1
    words = lambda xs: sum(len(x.split()) for x in xs) / len(xs)
    result = {
        "args": vars(args), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "sentences": n, "encode_seconds": t_encode,
        "base_pass_seconds": seconds[0], "step_seconds": seconds[1:], "steps_done": done,
        "seconds_per_sentence": (seconds[0] + steps_s) / n,  # the base pass and the steps done
        "step_seconds_per_sentence": steps_s / max(done, 1) / n,
        "words_reference": words(texts), "words_base": words(outputs[0]), "words_last_step": words(outputs[-1]),
    }
    same_work = done == 50 and args.beam == 8  # the reproduction's figure is for these alone
    result["below_vec2text"] = VEC2TEXT_SECONDS / result["seconds_per_sentence"] if same_work else None
    print(f"device {result['device']}, torch {result['torch']}, base {base.folder}: {n} sentences, "
          f"{done} steps" + (f" of {args.steps} (--max-seconds {args.max_seconds:g})" if done < args.steps else "")
          + f", beam {args.beam}")
    print("| measure | value |\n|---|---:|")
    print(f"| base pass, s | {seconds[0]:.2f} |")
    print(f"| {done} correction steps, s | {steps_s:.2f} |")
    if done > 1:  # the first step meets new shapes; the later ones are the steady cost
        print(f"| steps 2-{done}, s a sentence and step | {sum(seconds[2:]) / (done - 1) / n:.4f} |")
    print(f"| one step, s a sentence (mean of all) | {result['step_seconds_per_sentence']:.4f} |")
    print(f"| all of it, s a sentence | {result['seconds_per_sentence']:.3f} |")  # of the steps done
    if same_work:
        print(f"| vec2text reproduction's 26.7 s a sentence / this | {result['below_vec2text']:.0f}x |")
    print(f"| words a sentence: reference / base / last step | {result['words_reference']:.1f} / "
          f"{result['words_base']:.1f} / {result['words_last_step']:.1f} |")
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
