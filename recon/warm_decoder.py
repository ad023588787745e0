"""A decoder warm-started from the encoder's own pretrained layers (Rothe et al. 2020).

BERT2BERT (Rothe, Narayan and Severyn 2020) starts a decoder from a BERT checkpoint: the same
layers, causally masked. This decoder has the encoder's shape (its width, heads and feed-forward
width; its first --n-layer layers), post-LayerNorm as BERT is, and at the start of a run
(--embedding-init encoder) every weight with a counterpart in the encoder is copied from it: the
token embeddings (each decoder piece as the mean of the encoder's embeddings of its word pieces, at
the encoder's own scale), the position embeddings (plus token type 0), the embedding LayerNorm, and
each layer's attention, feed-forward and LayerNorms. What has no counterpart starts as in the plain
decoder: the vector's prefix projection, the bag-of-words head and its gate, coverage, the final
LayerNorm. The copied weights train at --warm-lr-ratio of --lr, the rest at --lr. With
--embedding-init random nothing is copied: the same architecture from a random start, the control.

    python train.py --decoder-type encoder-warm --d-model 384 --n-layer 6 --n-head 12 --d-ff 1536
"""

import torch
import torch.nn as nn

from recon.decoder import Block, Decoder, register_decoder
from recon.errors import ConfigError


class PostLNBlock(Block):
    """BERT's order: attention, residual, LayerNorm; feed-forward, residual, LayerNorm."""

    def forward(self, x, cache=None, layer=0, keep=None):
        x = self.ln1(x + self.resid_drop(self.attention(x, cache, layer, keep)))
        return self.ln2(x + self.resid_drop(self.mlp(x)))


@register_decoder("encoder-warm")
class WarmDecoder(Decoder):
    block_class = PostLNBlock

    def __init__(self, spec, vector_dim, vocab_size):
        super().__init__(spec, vector_dim, vocab_size)
        self.emb_ln = nn.LayerNorm(spec.d_model)  # BERT normalises its embeddings before the first layer
        self.warm_lr_ratio = spec.warm_lr_ratio
        # the parameters copied from the encoder (--embedding-init encoder), by name: a resumed run,
        # which copies nothing, builds the same optimizer groups
        self.warm = set() if spec.embedding_init != "encoder" else {
            name for name, _ in self.named_parameters() if name.startswith(("blocks.", "emb_ln.", "pos_emb.", "tok_emb."))}

    def run_blocks(self, x, rows, input_ids, cache, n_prefix):
        return super().run_blocks(self.emb_ln(x), rows, input_ids, cache, n_prefix)

    def optimizer_groups(self, weight_decay):
        """The plain decoder's groups, each split in two: the copied weights at --warm-lr-ratio."""
        warm_ids = {id(p) for name, p in self.named_parameters() if name in self.warm}
        groups = []
        for g in super().optimizer_groups(weight_decay):
            for scale, params in ((1.0, [p for p in g["params"] if id(p) not in warm_ids]),
                                  (self.warm_lr_ratio, [p for p in g["params"] if id(p) in warm_ids])):
                if params:
                    groups.append({**g, "params": params, "lr_scale": scale})
        return groups

    @torch.no_grad()
    def init_from_encoder(self, encoder, rows):
        model, cfg = encoder.model, encoder.model.config
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if layers is None or not hasattr(model, "embeddings"):
            raise ConfigError(f"--decoder-type encoder-warm copies a BERT-style encoder's layers; {type(model).__name__} "
                              "has no embeddings and encoder.layer: use --decoder-type transformer")
        shape = (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
        d_ff = self.blocks[0].mlp[0].out_features
        if shape != (self.d_model, self.n_head, d_ff) or self.n_layer > len(layers):
            raise ConfigError(f"--decoder-type encoder-warm copies the encoder's layers, so it has the encoder's shape: give "
                              f"--d-model {cfg.hidden_size} --n-head {cfg.num_attention_heads} --d-ff {cfg.intermediate_size} "
                              f"and --n-layer at most {len(layers)} (now {self.d_model} / {self.n_head} / {d_ff} / "
                              f"{self.n_layer})")
        if getattr(cfg, "hidden_act", "gelu") != "gelu":
            raise ConfigError(f"--decoder-type encoder-warm: the encoder's activation is {cfg.hidden_act}, the decoder's GELU")
        emb = model.embeddings
        w = self.tok_emb.weight  # the rows are the host's; the decoder may be on a GPU
        found = ~rows.isnan().any(1)
        w[found.to(w.device)] = rows[found].to(w.device, w.dtype)
        n = self.pos_emb.num_embeddings
        if emb.position_embeddings.num_embeddings < n:
            raise ConfigError(f"--decoder-type encoder-warm: the encoder has {emb.position_embeddings.num_embeddings} "
                              f"positions, the decoder needs {n}; lower --max-target-len or --num-prefix")
        self.pos_emb.weight.copy_(emb.position_embeddings.weight[:n] + emb.token_type_embeddings.weight[0])
        self.emb_ln.load_state_dict(emb.LayerNorm.state_dict())
        for block, layer in zip(self.blocks, layers):
            att = layer.attention
            block.qkv.weight.copy_(torch.cat([att.self.query.weight, att.self.key.weight, att.self.value.weight]))
            block.qkv.bias.copy_(torch.cat([att.self.query.bias, att.self.key.bias, att.self.value.bias]))
            block.proj.load_state_dict(att.output.dense.state_dict())
            block.ln1.load_state_dict(att.output.LayerNorm.state_dict())
            block.mlp[0].load_state_dict(layer.intermediate.dense.state_dict())
            block.mlp[2].load_state_dict(layer.output.dense.state_dict())
            block.ln2.load_state_dict(layer.output.LayerNorm.state_dict())
        return (f"decoder warm-started from the encoder: {int(found.sum())} of {len(rows)} token embeddings, "
                f"{n} positions and {self.n_layer} of its {len(layers)} layers (at {self.warm_lr_ratio:g} x --lr)")
