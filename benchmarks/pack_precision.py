"""What packing the encoder in fp16 (recon/session.py) does to the vectors: the same sentences
encoded by the fp32 encoder and by its fp16-rounded copy, compared.

    python benchmarks/pack_precision.py            # up to 2,000 test-split sentences of the default corpus, CPU
"""

import argparse

import torch

from recon.data import DataConfig
from recon.device import keep_freed_memory
from recon.encoder import EncoderSpec


def main(argv=None):
    keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--representation", default="cls")
    args = p.parse_args(argv)
    spec = EncoderSpec(representation=args.representation)
    encoder = spec.build().eval()
    texts = DataConfig().build(encoder.count_tokens, spec.max_length).texts("test")[:args.sentences]
    before = encoder.encode(texts)
    with torch.no_grad():
        for param in encoder.model.parameters():
            param.copy_(param.half().float())
    after = encoder.encode(texts)
    cos = torch.nn.functional.cosine_similarity(before, after, dim=-1)
    print(f"{len(texts)} sentences, {spec.encoder} {args.representation}: max |difference| "
          f"{(before - after).abs().max():.2e} (largest |value| {before.abs().max():.2f}), "
          f"cosine min {cos.min():.7f} mean {cos.mean():.7f}")


if __name__ == "__main__":
    main()
