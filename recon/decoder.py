"""A small causal transformer that writes a sentence from one vector.

The vector is the only thing it sees of the input: a learned projection turns it into
`num_prefix` embeddings that sit before the [BOS] token; everything after is the decoder's own
output. Two more paths from the vector: a bag-of-words head (what tokens the sentence holds,
trained by its own loss) whose log-probabilities are added to the logits at every position, and
a learned per-token penalty on what was already written (coverage). Pre-LayerNorm GPT blocks,
PyTorch's scaled_dot_product_attention, tied input/output embeddings, and a key/value cache for
generation.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from recon.errors import check
from recon.speed import transformer_flops_per_token

CONDITIONS = ("prefix", "prefix+add", "prefix+add-zero")
DECODERS = {}  # decoder_type -> class; a new decoder class registers itself with @register_decoder


def register_decoder(name):
    def add(cls):
        DECODERS[name] = cls
        return cls
    return add


@dataclass
class DecoderSpec:
    """The decoder's shape. Used whole by the command line, the checkpoint's config and ReconModel;
    `decoder_type` picks the class (DECODERS), which takes the whole spec."""

    decoder_type: str = field(default="transformer", metadata={"help": "the decoder class (registered in recon/decoder.py)"})
    d_model: int = field(default=256, metadata={"help": "decoder width"})
    n_layer: int = field(default=2, metadata={"help": "decoder layers"})
    n_head: int = field(default=4, metadata={"help": "decoder attention heads"})
    d_ff: int = field(default=0, metadata={"help": "the feed-forward width of a decoder layer (0: 4 x --d-model)"})
    dropout: float = field(default=0.0, metadata={
        "help": "decoder dropout (0 by default: at the CPU default's budget, about six passes, 0.1 lowered the "
                "validation loss but wrote less of the sentence, and it costs about a fifth of a bf16 CPU step; "
                "try 0.1 for runs of many more passes)"})
    num_prefix: int = field(default=4, metadata={"help": "prefix embeddings the vector is projected to"})
    max_target_len: int = field(default=64, metadata={"help": "longest decoder output, in decoder tokens"})
    condition: str = field(default="prefix", metadata={
        "help": "how the vector reaches the decoder: prefix (--num-prefix embeddings before [BOS]), "
                "prefix+add (also a projection of it added to every position, as Optimus does), or "
                "prefix+add-zero (the same projection initialised to zero: it starts as a no-op)"})
    bow_weight: float = field(default=1.0, metadata={
        "help": "weight of an auxiliary bag-of-words loss: predict the target's tokens from the vector alone "
                "(Zhao et al. 2017); 0: off"})
    bow_prior: bool = field(default=True, metadata={
        "help": "add the bag-of-words head's log-probabilities (what the vector says the sentence holds), "
                "scaled by a learned gate per position, to the decoder's logits at every position"})
    bow_hidden: int = field(default=0, metadata={
        "help": "the bag-of-words head: 0, a linear map of the vector; N, one hidden layer of N units (GELU)"})
    bow_head: str = field(default="full", metadata={
        "help": "the bag-of-words head's output: tied (into the space of the token embeddings, scored by them: "
                "rank --d-model) or full (its own weights for every vocabulary token: a linear probe of full rank)"})
    embedding_init: str = field(default="encoder", metadata={
        "help": "the decoder's token embeddings (tied with its output layer) start from the encoder's input "
                "embeddings (encoder): each decoder piece as the mean of the encoder's embeddings of its word "
                "pieces, projected to --d-model by PCA (the vocabulary part of Rothe et al. 2020's warm start); "
                "or random. A scratch or random-weight encoder's embeddings are random: a random start either way"})
    corrector_init: str = field(default="one", metadata={
        "help": "a corrector reads the hypothesis at full strength from the first step (one), or through a "
                "learned gate that starts at zero (zero: it begins as its base decoder; in 600 steps at lr 3e-4 "
                "the gate of the default run's corrector reached 0.002, and it read nothing); aligned: at full "
                "strength, and hypothesis token j starts with the position embedding of the output position that "
                "writes token j, so that copying is a match of positions"})
    corrector_copy: bool = field(default=False, metadata={
        "help": "a corrector may copy from its hypothesis: a pointer over the hypothesis's tokens (attention "
                "from each output position to the hypothesis's final states) mixed with the vocabulary by a "
                "learned gate, as in See et al. 2017's pointer-generator"})
    word_dropout: float = field(default=0.0, metadata={
        "help": "in training, replace each input token after [BOS] by a blank (a zero embedding) with this "
                "probability, so that the decoder must take more of the sentence from the vector (Bowman et al. "
                "2016); generation and validation losses see every token (0: off)"})
    vector_noise: float = field(default=0.0, metadata={
        "help": "in training, add Gaussian noise of this std to the standardised vector before the decoder reads "
                "it (prefix and bag-of-words prior): neighbouring vectors must decode to the same sentence, a "
                "regulariser of the vector's path alone (0: off)"})
    warm_lr_ratio: float = field(default=0.1, metadata={
        "help": "--decoder-type encoder-warm: the weights copied from the encoder train at this share of --lr"})
    prior_used_up: bool = field(default=True, metadata={
        "help": "a token already written loses its bag-of-words boost: the logits minus a learned share (starting "
                "at 1) of the prior's gate times the token's prior above the vocabulary's lowest, once the token "
                "is among the inputs; the prior says what the sentence holds, not how often (needs --bow-prior; the "
                "default since it wrote more of the sentence's words at the same BLEU on three validation seeds)"})
    coverage: bool = field(default=True, metadata={
        "help": "subtract from each token's logit a learned penalty of that token times the times it was "
                "already written (coverage, after See et al. 2017): a decoder that can learn not to repeat itself"})

    def __post_init__(self):
        for name in ("d_model", "n_layer", "n_head", "num_prefix", "max_target_len"):
            check(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        check(self.d_ff >= 0, f"--d-ff must be 0 (4 x --d-model) or more, not {self.d_ff}")
        check(self.d_model % self.n_head == 0, f"--d-model {self.d_model} must be divisible by --n-head {self.n_head}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), not {self.dropout}")
        check(0 <= self.word_dropout < 1, f"--word-dropout must be in [0, 1), not {self.word_dropout}")
        check(self.warm_lr_ratio > 0, f"--warm-lr-ratio must be positive, not {self.warm_lr_ratio}")
        check(self.vector_noise >= 0, f"--vector-noise cannot be negative, not {self.vector_noise}")
        check(self.condition in CONDITIONS, f"--condition must be one of {CONDITIONS}, not {self.condition!r}")
        check(self.bow_weight >= 0, f"--bow-weight cannot be negative, not {self.bow_weight}")
        check(self.bow_hidden >= 0, f"--bow-hidden must be 0 (linear) or more, not {self.bow_hidden}")
        check(self.bow_head in ("tied", "full"), f"--bow-head must be tied or full, not {self.bow_head!r}")
        check(self.embedding_init in ("random", "encoder"),
              f"--embedding-init must be random or encoder, not {self.embedding_init!r}")
        check(self.corrector_init in ("zero", "one", "aligned"),
              f"--corrector-init must be zero, one or aligned, not {self.corrector_init!r}")
        check(self.bow_prior or not self.prior_used_up, "--prior-used-up (on by default) takes back the bag-of-words "
              "prior: it needs --bow-prior true; with --bow-prior false, also give --prior-used-up false")

    def build(self, vector_dim, vocab_size):
        check(self.decoder_type in DECODERS,
              f"--decoder-type must be one of {sorted(DECODERS)}, not {self.decoder_type!r}")
        return DECODERS[self.decoder_type](self, vector_dim, vocab_size)


class KVCache:
    """Preallocated keys and values for every layer: (L, B, H, T_max, hd) each."""

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, device, dtype):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled
        self._whole = (self.k, self.v)  # the buffers whose front rows self.k and self.v are
        self._spare = None  # reorder and select copy into a second pair, then swap
        self.rows = {}  # name -> (B, ...): what the first call computed from the vectors, for later steps
        self.of_tokens = set()  # the rows' names that follow the tokens written, not the input alone

    def set_token_row(self, name, t):
        """Keep a row that follows the tokens written so far (B, ...): beam search moves it with them."""
        self.rows[name] = t
        self.of_tokens.add(name)

    def select(self, index):
        """Keep only these rows of the batch (finished sequences leave it)."""
        self.rows = {name: t.index_select(0, index) for name, t in self.rows.items()}
        self._move(index)

    def reorder(self, index):
        """Beam search: row i of the batch continues row index[i], a beam of the same input. The rows
        computed from the input alone are alike across its beams and stay; those of the tokens written
        (set_token_row) and the keys and values of the positions filled so far move."""
        self.rows.update({name: self.rows[name].index_select(0, index) for name in self.of_tokens})
        self._move(index)

    def _move(self, index):
        """Keys and values: row i becomes row index[i], into the front rows of a second pair of buffers
        of the first batch's size (a fresh tensor per step costs more, in page faults, than the copy),
        then the pairs swap. Only the positions filled so far are copied: each later one is written
        before it is read."""
        if self._spare is None:
            self._spare = (torch.empty_like(self._whole[0]), torch.empty_like(self._whole[1]))
        filled, n = slice(0, self.pos), len(index)
        k, v = self._spare[0][:, :n], self._spare[1][:, :n]
        torch.index_select(self.k[:, :, :, filled], 1, index, out=k[:, :, :, filled])
        torch.index_select(self.v[:, :, :, filled], 1, index, out=v[:, :, :, filled])
        self.k, self.v = k, v
        self._whole, self._spare = self._spare, self._whole


class Block(nn.Module):
    def __init__(self, d_model, n_head, dropout, d_ff=0):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def attention(self, x, cache, layer, keep=None):
        """keep: None, or (B, S) bools of the key positions that may be attended to (False: padding
        inside the sequence, a corrector's short hypothesis), S covering every position so far."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        start = cache.pos if cache is not None else 0
        end = start + T
        if cache is not None:
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
        drop = self.dropout if self.training and cache is None else 0.0
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # under CPU bf16 autocast, attention alone stays fp32: PyTorch's CPU attention has a
            # slower backward in bf16 than in fp32
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float(), keep, start, end, drop)
        else:
            y = self._attend(q, k, v, keep, start, end, drop)
        return self.proj(y)

    @staticmethod
    def _attend(q, k, v, keep, start, end, drop):
        B, H, T, hd = q.shape
        if keep is None and (start == 0 or T == 1):
            # the first call fills a block of positions (causal within it); a later call of one
            # position may attend to everything before it
            y = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and T > 1, dropout_p=drop)
        else:  # padding to skip, or a later call of several positions (causal among them)
            causal = torch.ones(T, end, dtype=torch.bool, device=q.device).tril(start)  # (T, end)
            mask = causal[None, None]  # (1, 1, T, end)
            if keep is not None:
                mask = mask & keep[:, None, None, :end]  # (B, 1, T, end)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return y.transpose(1, 2).reshape(B, T, H * hd)

    def forward(self, x, cache=None, layer=0, keep=None):
        x = x + self.resid_drop(self.attention(self.ln1(x), cache, layer, keep))
        x = x + self.resid_drop(self.mlp(self.ln2(x)))
        return x


def vector_stats(vectors):
    """(mean, std) of (N, Dv) vectors as a decoder standardises them (Decoder.set_vector_stats): a
    dimension that barely varies gets a tenth of the median std, not its own; std 1 for one vector."""
    vectors = vectors.float()
    if len(vectors) < 2:
        return vectors.mean(0), torch.ones(vectors.shape[1])
    std = vectors.std(0)
    return vectors.mean(0), std.clamp(min=max(0.1 * float(std.median()), 1e-6))


@register_decoder("transformer")
class Decoder(nn.Module):
    """What every decoder class answers: forward (logits for each input token), new_cache,
    max_target_len, set_vector_stats / standardize, optimizer_groups and flops_per_token."""

    block_class = Block  # a subclass may change the layer (the warm start's is post-LayerNorm)
    # the precision of generation (recon/decoding.py; recon.device.resolve_precision): bf16 autocast on
    # CUDA, fp32 on a CPU, where bf16 cost a tenth of a BLEU point for 1.2x (--generation-precision)
    generation_precision = "bf16-cuda-only"

    def __init__(self, spec, vector_dim, vocab_size):
        super().__init__()
        d_model, n_layer, n_head, dropout, num_prefix, max_target_len = (
            spec.d_model, spec.n_layer, spec.n_head, spec.dropout, spec.num_prefix, spec.max_target_len)
        self.num_prefix = num_prefix
        self.max_target_len = max_target_len
        self.bow_weight = spec.bow_weight
        self.word_dropout, self.vector_noise = spec.word_dropout, spec.vector_noise
        self.d_model, self.n_layer, self.n_head = d_model, n_layer, n_head
        # vectors are standardised per dimension with statistics of the training vectors: a frozen
        # encoder's vectors share a large common component that would otherwise drown the rest
        self.register_buffer("vector_mean", torch.zeros(vector_dim))
        self.register_buffer("vector_std", torch.ones(vector_dim))
        self.prefix = nn.Linear(vector_dim, num_prefix * d_model)
        # optional paths of the vector: added at every position; a bag-of-words head
        self.add = nn.Linear(vector_dim, d_model) if spec.condition.startswith("prefix+add") else None
        self.bow = None
        self.bow_tied = spec.bow_head == "tied"
        if spec.bow_weight > 0 or spec.bow_prior:  # tied: maps the vector to the space of the token embeddings
            out = d_model if self.bow_tied else vocab_size
            self.bow = nn.Linear(vector_dim, out) if not spec.bow_hidden else nn.Sequential(
                nn.Linear(vector_dim, spec.bow_hidden), nn.GELU(), nn.Linear(spec.bow_hidden, out))
        self.prior_gate = nn.Linear(d_model, 1) if spec.bow_prior else None
        self.prior_used = nn.Parameter(torch.ones(())) if spec.prior_used_up else None
        self.coverage = nn.Parameter(torch.zeros(vocab_size)) if spec.coverage else None
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(num_prefix + max_target_len + 1, d_model)  # prefix, [BOS], tokens
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(self.block_class(d_model, n_head, dropout, spec.d_ff) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        if spec.condition == "prefix+add-zero":  # a standardised vector is large: start without it
            nn.init.zeros_(self.add.weight)
        if self.prior_gate is not None:  # start as the bag of words plus an untrained language model
            nn.init.zeros_(self.prior_gate.weight)
            nn.init.ones_(self.prior_gate.bias)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def set_vector_stats(self, vectors):
        """Standardise inputs with the mean and std of these (N, Dv) training vectors.

        A dimension that barely varies is divided by a tenth of the median std, not by its own:
        all-MiniLM-L6-v2's [CLS] has three dimensions that are always 0 (std 1e-33), and a
        fine-tuned encoder that moves one of them by 0.1 would otherwise send the decoder values of
        1e5 (with a frozen encoder they stay 0 either way)."""
        mean, std = vector_stats(vectors)
        self.vector_mean.copy_(mean)
        self.vector_std.copy_(std)

    def standardize(self, vectors):
        """(N, Dv) vectors in the decoder's input space: minus the training mean, over the training
        std. Evaluation measures distances here too: raw cosines between [CLS] states are all ~1."""
        return (vectors.float().to(self.vector_mean.device) - self.vector_mean) / self.vector_std

    def optimizer_groups(self, weight_decay):
        """AdamW parameter groups: weight decay on the matrices of linear layers only (not on
        embeddings, biases or LayerNorm), in parameter order."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decay = [p for p in self.parameters() if p.dim() >= 2 and id(p) not in embeddings]
        chosen = {id(p) for p in decay}
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": [p for p in self.parameters() if id(p) not in chosen], "weight_decay": 0.0}]

    def hidden_matrices(self):
        """The weight matrices of the blocks' linear layers: what --optimizer muon gives Muon."""
        return [m.weight for m in self.blocks.modules() if isinstance(m, nn.Linear)]

    def flops_per_token(self, target_len):
        """Forward + backward model FLOPs of one real token of a batch whose targets are target_len
        long (for MFU): every matrix a token passes through, the tied output layer included; the
        once-per-sentence prefix projection is not. Attention spans the prefix too."""
        if not hasattr(self, "_matmul_params"):  # counted once, not in every step
            blocks = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
            self._matmul_params = blocks + self.tok_emb.weight.numel()
        return transformer_flops_per_token(self._matmul_params, self.n_layer, self.d_model, self.num_prefix + target_len)

    @property
    def max_positions(self):
        return self.pos_emb.num_embeddings

    def forward(self, vectors=None, input_ids=None, cache=None):
        """Logits for the next token at every position of `input_ids`.

        vectors: (B, Dv) sentence vectors; given on the first call (no cache, or an empty one).
        input_ids: (B, T) decoder tokens starting with [BOS]; may be None on a first cached call.
        Returns (B, T, V) logits, one row per input token (the prefix positions are dropped).
        """
        parts, rows = [], {}
        if vectors is not None:
            B = vectors.shape[0]
            z = self.noised(self.standardize(vectors), cache)
            parts.append(self.prefix(z).view(B, self.num_prefix, self.d_model))  # (B, k, D)
            rows = self.vector_rows(z)
            if cache is not None:
                cache.rows = rows
        elif cache is not None:
            rows = cache.rows
        if input_ids is not None:
            parts.append(self.embed_tokens(input_ids, cache))  # (B, T, D)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, k+T, D)
        start = cache.pos if cache is not None else 0
        if start + x.shape[1] > self.max_positions:
            raise ValueError(f"sequence of {start + x.shape[1]} positions exceeds the decoder's {self.max_positions}")
        pos = torch.arange(start, start + x.shape[1], device=x.device)
        x = x + self.pos_emb(pos)
        return self.run_blocks(x, rows, input_ids, cache, self.num_prefix if vectors is not None else 0)

    def noised(self, z, cache=None):
        """Standardised vectors z (B, Dv), with --vector-noise added in training (a full sequence, no cache)."""
        if self.training and self.vector_noise > 0 and cache is None:
            z = z + self.vector_noise * torch.randn_like(z)
        return z

    def embed_tokens(self, input_ids, cache=None):
        """(B, T, D) embeddings of input tokens; in training (a full sequence, no cache), --word-dropout
        blanks each token after [BOS] with its probability. Coverage still counts the real tokens."""
        x = self.tok_emb(input_ids)
        if self.training and self.word_dropout > 0 and cache is None:
            keep = torch.rand(input_ids.shape, device=input_ids.device) >= self.word_dropout
            keep[:, 0] = True  # [BOS]
            x = x * keep[..., None].to(x.dtype)
        return x

    def vector_rows(self, z):
        """What later positions use of the standardised vectors z (B, Dv): the added condition, the
        bag-of-words prior."""
        rows = {}
        if self.add is not None:
            rows["cond"] = self.add(z)  # (B, D)
        if self.prior_gate is not None:
            rows["prior"] = self.bow_logprobs(z)  # (B, V)
            if self.prior_used is not None:  # --prior-used-up: each token's boost over the vocabulary's lowest
                rows["boost"] = rows["prior"] - rows["prior"].min(-1, keepdim=True).values
        return rows

    def run_blocks(self, x, rows, input_ids, cache, n_prefix):
        """The embedded positions x (B, P+T, D) through the blocks to logits (B, T, V) of the
        token positions (the first n_prefix positions predict nothing)."""
        x = self.hidden_states(x, rows, cache)
        return self.token_logits(self.ln_f(x[:, n_prefix:]), rows, input_ids, cache)  # token positions alone

    def hidden_states(self, x, rows, cache):
        """The embedded positions x (B, S, D) through the blocks (B, S, D), before the final LayerNorm."""
        if "cond" in rows:
            x = x + rows["cond"][:, None]
        x = self.drop(x)
        keep = rows.get("keep")
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, keep)
        if cache is not None:
            cache.pos += x.shape[1]
        return x

    def token_logits(self, x, rows, input_ids, cache):
        """Logits (B, T, V) from the final states x (B, T, D) of the token positions."""
        logits = F.linear(x, self.tok_emb.weight)  # tied input/output embeddings: (B, T, V)
        if input_ids is None or not ("prior" in rows and self.prior_used is not None or self.coverage is not None):
            history = None
        elif cache is None:
            history = input_ids[:, :0]  # a whole sequence: no earlier call
        else:  # the inputs of the cache's earlier calls (B, t), moved with their beams
            history = cache.rows.get("history", input_ids[:, :0])
            cache.set_token_row("history", torch.cat([history, input_ids], 1))
        # in generation (a cache, no gradient) the logits are new here and change in place
        in_place = cache is not None and not torch.is_grad_enabled()
        if "prior" in rows:  # what the vector says the sentence holds, as much as each position wants
            gate = self.prior_gate(x)  # (B, T, 1)
            prior = rows["prior"][:, None].to(logits.dtype)  # (B, 1, V); in place, no (B, T, V) temporary
            logits = logits.addcmul_(gate, prior) if in_place else logits + gate * prior
            if self.prior_used is not None and input_ids is not None:
                logits = self.use_up_prior(logits, gate, rows["boost"], input_ids, history, in_place)
        if self.coverage is not None and input_ids is not None:
            logits = self.penalise_written(logits, input_ids, history, in_place)
        return logits

    def use_up_prior(self, logits, gate, boost, input_ids, history, in_place=False):
        """--prior-used-up: logits (B, T, V) minus the learned share of the prior's boost (B, V), gate x
        (prior minus the vocabulary's lowest), of every token among the inputs up to each position (once a
        token, however often written), the inputs of earlier cached calls (history (B, t)) included.
        Scattered from (B, T, T) and (B, T, t) as coverage is, not marked in a (B, T, V) tensor."""
        B, T = input_ids.shape
        share = self.prior_used * gate[..., 0]  # (B, T)
        seen = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # position t: inputs 0..t
        same = input_ids[:, :, None] == input_ids[:, None, :]  # (B, T, T)
        first = ~(same & seen.tril(-1)).any(-1)  # (B, T): no earlier input is the same token
        if history.shape[1]:
            first = first & ~(input_ids[:, :, None] == history[:, None, :]).any(-1)
            # each written token's entry less share x boost: a token written twice gets the same value twice
            at = history[:, None, :].expand(B, T, -1)  # (B, T, t)
            taken = (share[..., None] * boost.gather(1, history)[:, None, :]).to(logits.dtype)
            logits = (logits.scatter_ if in_place else logits.scatter)(2, at, logits.gather(2, at) - taken)
        amount = share[:, :, None] * (boost.gather(1, input_ids) * first)[:, None, :] * seen  # (B, T, T)
        add = logits.scatter_add_ if in_place else logits.scatter_add
        return add(2, input_ids[:, None, :].expand(B, T, T), -amount.to(logits.dtype))

    def penalise_written(self, logits, input_ids, history, in_place=False):
        """--coverage: logits (B, T, V) minus each token's learned penalty times how often it occurs
        in the inputs up to each position ([BOS] and the tokens written so far), the inputs of earlier
        cached calls (history (B, t)) counted first. Scattered from (B, T, T) and (B, T, t), not
        counted in a (B, T, V) tensor."""
        B, T = input_ids.shape
        seen = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # position t: inputs 0..t
        amount = self.coverage[input_ids][:, None, :] * seen  # (B, T, T): column s, the penalty of input s
        add = logits.scatter_add_ if in_place else logits.scatter_add
        logits = add(2, input_ids[:, None, :].expand(B, T, T), -amount.to(logits.dtype))
        if history.shape[1]:
            # each written token's entry less its penalty times its count, the same value for each copy
            counts = (history[:, :, None] == history[:, None, :]).sum(-1, dtype=torch.float32)  # (B, t)
            at = history[:, None, :].expand(B, T, -1)
            penalty = (self.coverage[history] * counts)[:, None, :].to(logits.dtype)  # (B, 1, t)
            logits = (logits.scatter_ if in_place else logits.scatter)(2, at, logits.gather(2, at) - penalty)
        return logits

    def bow_logprobs(self, z):
        """(B, V) log-probabilities of the bag-of-words head for standardised vectors z."""
        h = self.bow(z)
        return (F.linear(h, self.tok_emb.weight) if self.bow_tied else h).float().log_softmax(-1)

    def bow_parameters(self):
        """What the bag-of-words head alone is made of (a tied head scores with the token embeddings,
        which are not its own)."""
        return list(self.bow.parameters()) if self.bow is not None else []

    @torch.no_grad()
    def bow_recall(self, vectors, targets, ignore_id):
        """Recall at |s| of the bag-of-words head: of each target's distinct tokens, the share among
        its |s| most probable tokens (|s|: how many distinct tokens it has), averaged over targets."""
        logp = self.bow_logprobs(self.standardize(vectors))  # (B, V)
        recalls = []
        for row, y in zip(logp, targets):
            want = set(y[y != ignore_id].tolist())
            top = set(row.topk(len(want)).indices.tolist()) if want else set()
            recalls.append(len(want & top) / max(len(want), 1))
        return sum(recalls) / max(len(recalls), 1)

    def bow_loss(self, vectors, targets, ignore_id):
        """Summed negative log-likelihood of every target token under one distribution over the
        vocabulary predicted from the vector alone (Zhao et al. 2017's bag-of-words loss)."""
        logp = self.bow_logprobs(self.standardize(vectors))  # (B, V)
        picked = logp.gather(1, targets.clamp(min=0))  # (B, T)
        return -(picked * (targets != ignore_id)).sum()

    def init_from_encoder(self, encoder, rows):
        """--embedding-init encoder, at the start of a run: what this decoder takes from the encoder
        (here its token embeddings; rows: prepare.encoder_rows). Returns a line for the log."""
        n = self.init_token_embeddings(rows)
        return f"decoder token embeddings: {n} of {len(rows)} start from the encoder's input embeddings"

    @torch.no_grad()
    def init_token_embeddings(self, rows):
        """--embedding-init encoder: rows (V, De) of the encoder's embedding space, NaN where a token
        has none, become the token embeddings: centred, projected on their first d_model principal
        axes (zero-padded if De is smaller) and scaled to the random initialisation's std; tokens
        without a row keep their random start."""
        rows, w = rows.float().cpu(), self.tok_emb.weight  # computed on the host; the decoder may be on a GPU
        found = ~rows.isnan().any(1)
        x = rows[found] - rows[found].mean(0)
        axes = torch.linalg.svd(x, full_matrices=False).Vh[:self.d_model]  # (min(De, D), De)
        proj = torch.zeros(len(x), self.d_model)
        proj[:, :len(axes)] = x @ axes.T
        w[found.to(w.device)] = (proj * (0.02 / proj.std())).to(w.device, w.dtype)
        return int(found.sum())

    def new_cache(self, batch, device, dtype):
        return KVCache(self.n_layer, batch, self.n_head, self.max_positions, self.d_model // self.n_head, device, dtype)
