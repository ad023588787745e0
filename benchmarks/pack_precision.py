"""What packing the encoder for a lent machine (recon/session.py: fp16, or int8 rows with a scale
each) does to the vectors: the same sentences encoded by the fp32 encoder and by each packed copy,
restored to fp32 as the session restores it, compared.

    python benchmarks/pack_precision.py            # up to 2,000 test-split sentences of the default corpus, CPU
"""

import argparse

import torch

from recon.data import DataConfig
from recon.decoder import vector_stats
from recon.device import keep_freed_memory
from recon.encoder import EncoderSpec
from recon.session import WEIGHTS, restore, shrink


def main(argv=None):
    keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--representation", default="cls")
    p.add_argument("--weights", default=",".join(WEIGHTS), help="comma-separated: fp16, int8")
    args = p.parse_args(argv)
    spec = EncoderSpec(representation=args.representation)
    encoder = spec.build().eval()
    texts = DataConfig().build(encoder.count_tokens, spec.max_length).texts("test")[:args.sentences]
    exact = encoder.encode(texts)
    state = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    for weights in args.weights.split(","):
        encoder.model.load_state_dict(restore(shrink(state, weights)))
        packed = encoder.encode(texts)
        cos = torch.nn.functional.cosine_similarity(exact, packed, dim=-1)
        # standardised as recon compares vectors (three of MiniLM's [CLS] dimensions are always 0)
        mean, std = vector_stats(exact)
        std_cos = torch.nn.functional.cosine_similarity((exact - mean) / std, (packed - mean) / std, dim=-1)
        print(f"{weights}: {len(texts)} sentences, {spec.encoder} {args.representation}: max |difference| "
              f"{(exact - packed).abs().max():.2e} (largest |value| {exact.abs().max():.2f}), "
              f"cosine min {cos.min():.7f} mean {cos.mean():.7f}, standardised min {std_cos.min():.5f} "
              f"mean {std_cos.mean():.5f}")
    encoder.model.load_state_dict(state)


if __name__ == "__main__":
    main()
