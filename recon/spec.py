"""Configs made of specs: the command-line config and a checkpoint's config each inherit the specs
of the parts they describe (encoder, decoder, ...), so every field and default is written once,
in its spec; `part` takes one spec back out, whole."""

from dataclasses import fields

from recon.decoder import DecoderSpec
from recon.encoder import EncoderSpec


# what a field meant before it existed: a checkpoint or run written then holds no value for it,
# and must be read as it was trained, whatever the default is now
UNRECORDED = {"decoder_type": "transformer", "condition": "prefix", "bow_weight": 0.0, "num_prefix": 1,
              "bow_prior": False, "coverage": False, "bow_hidden": 0, "bow_head": "tied",
              "embedding_init": "random",
              "encoder_dropout": True, "corrector_init": "one", "precision": "bf16-cuda-only", "hypothesis_noise": "0",
              "corrector_copy": False, "substitute_copies": 0, "prior_used_up": False, "optimizer": "adamw",
              "encoder_precision": "bf16-cuda-only", "generation_precision": "bf16-cuda-only"}


def with_unrecorded(recorded):
    """A recorded config or args dict, with the meaning of the fields it predates filled in."""
    return {**UNRECORDED, **recorded}


def part(spec_cls, config):
    """The spec_cls part of a config that inherits it (validated again by the spec)."""
    return spec_cls(**{f.name: getattr(config, f.name) for f in fields(spec_cls)})


def field_names(*spec_classes):
    return {f.name for cls in spec_classes for f in fields(cls)}


class ModelSpecs:
    """For a config that inherits EncoderSpec and DecoderSpec: each of them, whole."""

    @property
    def encoder_spec(self):
        return part(EncoderSpec, self)

    @property
    def decoder_spec(self):
        return part(DecoderSpec, self)
