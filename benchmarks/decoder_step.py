"""What each decoder option costs a training step: the default decoder's step (forward, loss with
the bag-of-words loss, backward, AdamW or --optimizer muon) timed in one process for several settings, each beside
the first setting timed (the previous default: dropout 0.1, tied bag-of-words head). Every row
is 4 layers unless it says otherwise, as when these rows were first measured (the default decoder
had 4 layers until commit 9561bae; it has 2 now, the "--n-layer 2" rows), and without --prior-used-up
unless it says so (the default decoder has it now: the "--prior-used-up" row).

    python benchmarks/decoder_step.py                # 64 sentences of 30 tokens, 8,000 tokens, torch's threads
    python benchmarks/decoder_step.py --threads 1 --steps 20
    python benchmarks/decoder_step.py --only "bf16"   # the settings whose name holds this (first: the baseline)

Random vectors and tokens: the cost does not depend on them. The token embeddings' starting values
(--embedding-init) cost nothing per step and are not timed.
"""

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import recon  # noqa: F401  (registers every decoder class)
from recon.decoder import DecoderSpec
from recon.device import autocast, cpu_has_bf16, keep_freed_memory
from recon.optim import make_muon

SETTINGS = {  # name -> DecoderSpec fields, and the step's precision (fp32 unless given)
    "previous default (dropout 0.1, tied head)": {"dropout": 0.1, "bow_head": "tied"},
    "dropout 0, tied head": {"dropout": 0.0, "bow_head": "tied"},
    "dropout 0.1, full head": {"dropout": 0.1, "bow_head": "full"},
    "default decoder (dropout 0, full head), fp32": {},
    "default decoder, no prior, no coverage, fp32": {"bow_prior": False, "coverage": False},
    "default decoder, bf16 autocast (--precision bf16)": {"precision": "bf16"},
    "default decoder, bf16, --word-dropout 0.25": {"precision": "bf16", "word_dropout": 0.25},
    "bf16, --n-layer 2 (the default decoder from 9561bae until the used-up prior)": {"precision": "bf16", "n_layer": 2},
    "fp32, --n-layer 2 (the default decoder on a CPU without native bf16)": {"n_layer": 2},
    "bf16, --n-layer 2 --prior-used-up (the default decoder now)": {"precision": "bf16", "n_layer": 2, "prior_used_up": True},
    "bf16, --n-layer 2 --scheduled-sampling (a second, gradient-free forward)": {
        "precision": "bf16", "n_layer": 2, "scheduled_sampling": True},
    "bf16, --n-layer 2 --prior-used-up --optimizer muon (Muon on the blocks' matrices)": {
        "precision": "bf16", "n_layer": 2, "prior_used_up": True, "optimizer": "muon"},
    "bf16, --n-layer 1": {"precision": "bf16", "n_layer": 1},
    "bf16, --n-layer 6": {"precision": "bf16", "n_layer": 6},
    "bf16, --d-model 384 --n-head 6": {"precision": "bf16", "d_model": 384, "n_head": 6},
    "bf16, --d-model 192 --n-layer 6 --n-head 4": {"precision": "bf16", "d_model": 192, "n_layer": 6, "n_head": 4},
    "encoder-warm, MiniLM's shape (6 x 384, 12 heads), bf16": {
        "precision": "bf16", "decoder_type": "encoder-warm", "d_model": 384, "n_layer": 6, "n_head": 12, "d_ff": 1536},
    "encoder-warm, MiniLM's first 3 layers, bf16": {
        "precision": "bf16", "decoder_type": "encoder-warm", "d_model": 384, "n_layer": 3, "n_head": 12, "d_ff": 1536},
}


def make_step(fields, args, vector_dim=384):
    """One training step of the decoder these DecoderSpec fields describe, as a closure."""
    # the layers the rows were measured at (see the docstring), and the prior as it was then (on by default now)
    fields = {"n_layer": 4, "prior_used_up": False, **fields}
    precision = fields.pop("precision", "fp32")
    sampled = fields.pop("scheduled_sampling", False)  # train.py's flags, not DecoderSpec fields
    optimizer = fields.pop("optimizer", "adamw")
    torch.manual_seed(0)
    decoder = DecoderSpec(**fields).build(vector_dim, args.vocab_size).train()
    if optimizer == "muon":  # the parameter groups as train.py makes them, the blocks' matrices to Muon
        opt = make_muon([{**g, "lr": 1e-3} for g in decoder.optimizer_groups(0.1)], decoder.hidden_matrices())
    else:
        opt = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    v = torch.randn(args.batch_size, vector_dim)
    y = torch.randint(5, args.vocab_size, (args.batch_size, args.tokens))
    inputs = torch.cat([torch.full((args.batch_size, 1), 2), y[:, :-1]], 1)  # [BOS] t1 .. t_{T-1}

    def step():
        with autocast(v.device, precision):
            x = inputs
            if sampled:  # ReconModel.sampled_inputs: the guesses of a pass without gradient replace a share of inputs
                with torch.no_grad():
                    guess = decoder(v, inputs).argmax(-1)
                x = inputs.clone()
                x[:, 1:] = torch.where(torch.rand(guess[:, :-1].shape) < 0.25, guess[:, :-1], inputs[:, 1:])
            logits = decoder(v, x)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") + decoder.bow_loss(v, y, 0)
        (loss / y.numel()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(step, n):
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per setting and round (after 3 warm-up steps)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all settings, interleaved; the median is kept")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tokens", type=int, default=30, help="target tokens per sentence")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--only", default="", help="time only the settings whose name contains this text")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be at least 1")
    keep_freed_memory()  # as train.py runs
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"decoder training step: {args.batch_size} sentences x {args.tokens} tokens, vocabulary {args.vocab_size}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds of {args.steps} steps; "
          f"this CPU {'multiplies' if cpu_has_bf16() else 'does not multiply'} bf16 natively "
          f"(--precision auto: {'bf16' if cpu_has_bf16() else 'fp32'})\n")
    print("| decoder | ms per step | tokens/s | time vs the first row |")
    print("|---|---:|---:|---:|")
    chosen = {name: fields for name, fields in SETTINGS.items() if args.only in name}
    if not chosen:
        p.error(f"--only {args.only!r} matches no setting; the settings are: {'; '.join(SETTINGS)}")
    steps = {name: make_step(fields, args) for name, fields in chosen.items()}
    for step in steps.values():  # warm-up: the allocator's pools and the thread pool settle here
        timed(step, 3)
    # interleaved rounds: a setting timed first or last gets no advantage from the machine's drift
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, args.steps))
    base = statistics.median(times[next(iter(steps))])
    for name in steps:
        s = statistics.median(times[name])
        print(f"| {name} | {1000 * s:.0f} | {args.batch_size * args.tokens / s:,.0f} | {s / base:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
