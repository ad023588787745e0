"""What does a corrector read of its hypothesis? Its teacher-forced loss on validation texts when
the hypothesis it is given is the base's, the reference itself, or nothing, each with the vector
of the base's hypothesis or of the reference. A corrector that reads its hypothesis's text has a
far lower loss given the reference (it copies); one that decodes the target vector alone does not.

    python experiments/corrector_reads.py checkpoints/exp/corr_NAME [--max-examples 256]
"""

import argparse

import torch

from recon import ReconModel
from recon.batching import pad_batch
from recon.checkpoint import resolve_checkpoint
from recon.prepare import decoder_targets


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--max-examples", type=int, default=256)
    args = ap.parse_args()
    folder = resolve_checkpoint(args.checkpoint)
    model = ReconModel.from_pretrained(folder).eval()
    if model.base is None:
        raise SystemExit(f"{folder} is not a corrector (train one with train.py --base-model RUN_DIR)")
    texts = model.training_corpus().texts("validation")[:args.max_examples]
    vectors = model.encode(texts)
    hyps = model.base.generate_from_vectors(vectors, no_repeat_ngram=3)
    tok, dec = model.tokenizer, model.decoder
    targets = pad_batch(decoder_targets(tok, texts, model.config.max_target_len)[0], model.config.pad_id, torch.device("cpu"))
    hv, rv = model.base.encode(hyps), model.base.encode(texts)
    nothing = dec.vector_mean.cpu().expand(len(texts), -1)
    print(f"{folder}: teacher-forced loss on {len(texts)} validation texts, by what the corrector is given")
    print("| hypothesis text | hypothesis vector | loss |\n|---|---|---:|")
    for name, h, v in (("the base's", hyps, hv), ("the reference", texts, rv), ("the reference", texts, hv),
                       ("the base's", hyps, rv), ("none", [""] * len(texts), nothing)):
        vname = {id(hv): "the base hypothesis's", id(rv): "the reference's", id(nothing): "the training mean"}[id(v)]
        with torch.no_grad():
            loss = model.loss(dec.rows(vectors.cpu(), v, tok.encode(h)), targets).item()
        print(f"| {name} | {vname} | {loss:.3f} |")


if __name__ == "__main__":
    main()
