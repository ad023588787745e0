"""Does the decoder write more of the sentence if decoding leans harder on the vector? Two decode-time
knobs, tried on a trained checkpoint and not adopted (docs/findings.md has the table):

    python experiments/guidance.py --prior-scale 1.5 -- --checkpoint checkpoints/default --split validation --retrieval-pool 0
    python experiments/guidance.py --cfg 0.3 -- --checkpoint checkpoints/default --split validation --retrieval-pool 0

--prior-scale S: the bag-of-words prior enters the logits S times as strongly as trained (1: as trained).
--cfg W: classifier-free guidance on the vector (after Sanchez et al. 2023, "Stay on topic with
classifier-free guidance"): each step's log-probabilities become lc + W * (lc - lu), lc given the
sentence's vector and lu given the training vectors' mean (a vector that says nothing in particular).
Greedy decoding, with the repeat ban and the valid-text constraint as evaluate.py applies them;
the controls are decoded the same way. Everything after `--` is evaluate.py's flags.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate as evaluate_script  # noqa: E402
import recon.model  # noqa: E402
from recon.decoder import Decoder  # noqa: E402
from recon.decoding import _cache_dtype, _precision, _strip, ban_repeats_  # noqa: E402
from recon.device import autocast  # noqa: E402


def scaled_prior(scale):
    """Decoder.run_blocks with the prior's gate times `scale`."""
    run_blocks = Decoder.run_blocks

    def run(self, x, rows, *args):
        if "prior" in rows:
            rows = {**rows, "prior": rows["prior"] * scale}
        return run_blocks(self, x, rows, *args)
    return run


def guided_greedy(weight):
    """recon.decoding.greedy with classifier-free guidance on the vector (no early exit of finished rows)."""
    @torch.no_grad()
    def greedy(decoder, vectors, bos_id, eos_id, max_new_tokens=None, valid=None, no_repeat_ngram=0, canon=None,
               temperature=0.0, generator=None):
        assert temperature == 0, "guided decoding here is greedy"
        B, device = vectors.shape[0], vectors.device
        max_new_tokens = min(max_new_tokens or decoder.max_target_len, decoder.max_target_len + 1)
        both = torch.cat([vectors, decoder.vector_mean.expand(B, -1).to(vectors.dtype)])  # with / without
        cache = decoder.new_cache(2 * B, device, _cache_dtype(decoder, device))
        out = torch.full((B, max_new_tokens), eos_id, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        state = valid.start(B) if valid else None
        with autocast(device, _precision(decoder, device)):
            logits = decoder(both, torch.full((2 * B, 1), bos_id, dtype=torch.long, device=device), cache)
            for t in range(max_new_tokens):
                lc, lu = (logits[rows, -1].float().log_softmax(-1) for rows in (slice(0, B), slice(B, None)))
                last = lc + weight * (lc - lu)
                if no_repeat_ngram:
                    ban_repeats_(last, out[:, :t], no_repeat_ngram, canon)
                if valid:
                    valid.mask_(last, state, max_new_tokens - 1 - t)
                nxt = last.argmax(-1).masked_fill(done, eos_id)
                if valid:
                    state = valid.advance(state, nxt)
                out[:, t] = nxt
                done |= nxt == eos_id
                if t == max_new_tokens - 1 or (t % 8 == 7 and bool(done.all())):  # a host sync every 8 tokens
                    break
                logits = decoder(None, torch.cat([nxt, nxt])[:, None], cache)
        return [_strip(row, eos_id) for row in out.cpu()]
    return greedy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior-scale", type=float, default=1.0, help="the bag-of-words prior times this (1: as trained)")
    p.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance weight on the vector (0: off)")
    p.add_argument("evaluate_args", nargs="*", help="evaluate.py's flags, after --")
    args = p.parse_args(argv)
    run_blocks, greedy = Decoder.run_blocks, recon.model.greedy
    try:
        if args.prior_scale != 1.0:
            Decoder.run_blocks = scaled_prior(args.prior_scale)
        if args.cfg:
            recon.model.greedy = guided_greedy(args.cfg)
        return evaluate_script.main(args.evaluate_args)
    finally:  # as it was, for whoever imported this
        Decoder.run_blocks, recon.model.greedy = run_blocks, greedy


if __name__ == "__main__":
    sys.exit(main())
