"""A small causal transformer that writes a sentence from one vector.

The vector is the only thing it sees of the input: a learned projection turns it into
`num_prefix` embeddings that sit before the [BOS] token; everything after is the decoder's own
output. Pre-LayerNorm GPT blocks, PyTorch's scaled_dot_product_attention, tied input/output
embeddings, and a key/value cache for generation.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache:
    """Preallocated keys and values for every layer: (L, B, H, T_max, hd) each."""

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, device, dtype):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled
        self._spare = None  # beam search reorders into a second buffer, then swaps

    def select(self, index):
        """Keep only these rows of the batch (finished sequences leave it)."""
        self.k, self.v = self.k.index_select(1, index), self.v.index_select(1, index)
        self._spare = None

    def reorder(self, index):
        """Beam search: row i of the batch continues row index[i]."""
        if self._spare is None:
            self._spare = (torch.empty_like(self.k), torch.empty_like(self.v))
        # into preallocated memory: a fresh tensor per step costs more (page faults) than the copy
        torch.index_select(self.k, 1, index, out=self._spare[0])
        torch.index_select(self.v, 1, index, out=self._spare[1])
        (self.k, self.v), self._spare = self._spare, (self.k, self.v)


class Block(nn.Module):
    def __init__(self, d_model, n_head, dropout):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def attention(self, x, cache, layer):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            start, end = cache.pos, cache.pos + T
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
            # the first call fills a block of positions (causal within it); later calls add one
            # position that may attend to everything before it
            y = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and T > 1)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def forward(self, x, cache=None, layer=0):
        x = x + self.resid_drop(self.attention(self.ln1(x), cache, layer))
        x = x + self.resid_drop(self.mlp(self.ln2(x)))
        return x


class Decoder(nn.Module):
    def __init__(self, vector_dim, vocab_size, d_model=256, n_layer=4, n_head=4, dropout=0.1,
                 num_prefix=1, max_target_len=64):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"decoder width {d_model} is not divisible by its {n_head} heads")
        self.num_prefix = num_prefix
        self.max_target_len = max_target_len
        self.d_model, self.n_layer, self.n_head = d_model, n_layer, n_head
        # vectors are standardised per dimension with statistics of the training vectors: a frozen
        # encoder's vectors share a large common component that would otherwise drown the rest
        self.register_buffer("vector_mean", torch.zeros(vector_dim))
        self.register_buffer("vector_std", torch.ones(vector_dim))
        self.prefix = nn.Linear(vector_dim, num_prefix * d_model)
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(num_prefix + max_target_len + 1, d_model)  # prefix, [BOS], tokens
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def set_vector_stats(self, vectors):
        """Standardise inputs with the mean and std of these (N, Dv) training vectors."""
        self.vector_mean.copy_(vectors.float().mean(0))
        self.vector_std.copy_(vectors.float().std(0).clamp(min=1e-6) if len(vectors) > 1 else torch.ones_like(self.vector_std))

    @property
    def max_positions(self):
        return self.pos_emb.num_embeddings

    def forward(self, vectors=None, input_ids=None, cache=None):
        """Logits for the next token at every position of `input_ids`.

        vectors: (B, Dv) sentence vectors; given on the first call (no cache, or an empty one).
        input_ids: (B, T) decoder tokens starting with [BOS]; may be None on a first cached call.
        Returns (B, T, V) logits, one row per input token (the prefix positions are dropped).
        """
        parts = []
        if vectors is not None:
            B = vectors.shape[0]
            z = (vectors - self.vector_mean) / self.vector_std
            parts.append(self.prefix(z).view(B, self.num_prefix, self.d_model))  # (B, k, D)
        if input_ids is not None:
            parts.append(self.tok_emb(input_ids))  # (B, T, D)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, k+T, D)
        start = cache.pos if cache is not None else 0
        if start + x.shape[1] > self.max_positions:
            raise ValueError(f"sequence of {start + x.shape[1]} positions exceeds the decoder's {self.max_positions}")
        pos = torch.arange(start, start + x.shape[1], device=x.device)
        x = self.drop(x + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += x.shape[1]
        if vectors is not None:
            x = x[:, self.num_prefix:]  # only token positions predict tokens
        x = self.ln_f(x)
        return F.linear(x, self.tok_emb.weight)  # tied input/output embeddings: (B, T, V)

    def new_cache(self, batch, device, dtype):
        return KVCache(self.n_layer, batch, self.n_head, self.max_positions, self.d_model // self.n_head, device, dtype)
