"""Iterative correction (after vec2text, Morris et al. 2023): a decoder that reads the target
vector, a hypothesis and the hypothesis's own re-encoded vector, and writes the text again; run in
a loop, each step's output is the next step's hypothesis.

    python train.py --base-model checkpoints/default --run-name corrector \
        --max-steps 600 --warmup-steps 50 --lr 1e-3 --hypotheses 0        # trains a corrector for that run
    python evaluate.py --checkpoint checkpoints/corrector --correction-steps 5 --output-dir out/

The corrector is a decoder class like any (registered as "corrector"). What it reads of a sentence
is one row: [target vector | hypothesis vector | hypothesis token ids (as floats, -1 past the
end)], so batched greedy and beam decoding run on it unchanged. Its prefix: `num_prefix` slots
each from the target vector, the hypothesis vector and their difference (all standardised with the
base's statistics), then the hypothesis's tokens with their own positions, then [BOS] and the text
it writes. It starts from the base decoder's weights; what is new starts small. It is trained on
the base model's greedy hypotheses for the training split (decoded and re-encoded once, cached);
a later round (--base-model naming a corrector run) starts from that corrector and learns from its
one-step outputs as well.
"""

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from recon.decoder import Decoder, register_decoder
from recon.device import resolve_precision
from recon.errors import ConfigError, check
from recon.progress import progress


CORRECTOR_OWN = ("corrector_init", "corrector_copy")  # decoder fields a corrector run sets itself, not taken from the base


@dataclass
class CorrectionSpec:
    """What a corrector run corrects: the base run whose hypotheses it reads."""

    base_model: Optional[str] = field(default=None, metadata={
        "help": "train a corrector for this run (folder or checkpoint) instead of a decoder: the encoder, "
                "vocabulary, decoder shape and data are the base run's"})
    hypotheses: int = field(default=8192, metadata={
        "help": "the corrector learns from the base's hypotheses of this many training texts (decoded once "
                "and cached; 0: all of the training split)"})
    hypothesis_copies: bool = field(default=False, metadata={
        "help": "also learn from the base's hypotheses of its training split's substitute copies "
                "(--substitute-copies): more rows, each a (vector, text) pair the base trained on"})
    hypothesis_repeat_ngram: int = field(default=3, metadata={
        "help": "the base's hypotheses for training are decoded greedily with this no-repeat n-gram ban "
                "(as the evaluation decodes; 0: off)"})

    hypothesis_noise: str = field(default="auto", metadata={
        "help": "the base decodes the training hypotheses from its vectors plus Gaussian noise of this std "
                "(standardised units), so that they are as wrong as its hypotheses of unseen text: the base "
                "has learnt its training texts, and its clean hypotheses of them are far better than of any "
                "other. auto: the std, of 0 to 2, at which the training hypotheses' token F1 is nearest the "
                "validation split's (measured on 512 texts); a number: that std (0: clean)"})

    previous_round: Optional[str] = field(default=None, metadata={
        "help": "a later-round corrector (vec2text's rounds): start from this corrector run's weights and learn "
                "from its one-step outputs of the training texts beside the base's hypotheses. --base-model "
                "CORRECTOR_RUN sets it (and --base-model to that corrector's base)"})

    hypothesis_mix: float = field(default=0.0, metadata={
        "help": "this share of the training rows read, instead of the base's hypothesis, the target text itself "
                "with a share of its words (drawn from 0 to --hypothesis-mix-rate for each row) deleted, "
                "replaced by a word of another training text or swapped with the next, re-encoded: hypotheses "
                "from nearly right to the base's, so that copying what is right pays and the hypothesis's vector "
                "says how far there is to go (0: the base's hypotheses alone)"})
    hypothesis_mix_rate: float = field(default=0.5, metadata={
        "help": "--hypothesis-mix: the largest share of a text's words that are changed"})
    companions: int = field(default=0, metadata={
        "help": "first train this many more decoders of the base's vectors (the base run's own flags at its next "
                "seeds, no evaluation) into the run folder's companion-seed<S>; the corrector's checkpoint records "
                "them, and vector feedback before it (--feedback-steps) pools their candidates with the base's"})

    def __post_init__(self):
        check(self.hypotheses >= 0, "--hypotheses must be 0 (all) or more")
        check(self.companions >= 0, f"--companions must be 0 or more, not {self.companions}")
        check(not self.companions or self.base_model, "--companions trains more decoders for a corrector run: give "
              "--base-model RUN_DIR too (evaluate.py --companions CK1,CK2 pools decoders already trained)")
        check(not self.previous_round or self.base_model,
              "--previous-round trains a later round of a corrector: give --base-model that corrector run instead")
        check(0 <= self.hypothesis_mix <= 1, f"--hypothesis-mix must be a share in [0, 1], not {self.hypothesis_mix}")
        check(0 < self.hypothesis_mix_rate <= 1,
              f"--hypothesis-mix-rate must be in (0, 1], not {self.hypothesis_mix_rate}")
        if self.hypothesis_noise != "auto":
            try:
                ok = float(self.hypothesis_noise) >= 0
            except ValueError:
                ok = False
            check(ok, f"--hypothesis-noise must be auto or a std of 0 or more, not {self.hypothesis_noise!r}")
        check(self.hypothesis_repeat_ngram == 0 or self.hypothesis_repeat_ngram >= 2,
              "--hypothesis-repeat-ngram must be 0 (off) or 2 or more")


@register_decoder("corrector")
class Corrector(Decoder):
    """A Decoder whose input row is [target vector | hypothesis vector | hypothesis ids]."""

    def __init__(self, spec, vector_dim, vocab_size):
        super().__init__(spec, vector_dim, vocab_size)
        k, D = spec.num_prefix, spec.d_model
        self.vector_dim, self.hyp_len = vector_dim, spec.max_target_len
        self.hyp_prefix = nn.Linear(vector_dim, k * D)
        self.diff_prefix = nn.Linear(vector_dim, k * D)
        self.slot_pos = nn.Parameter(torch.zeros(2 * k, D))
        self.hyp_pos = nn.Embedding(self.hyp_len, D)
        self.hyp_segment = nn.Parameter(torch.zeros(D))
        for m in (self.hyp_prefix, self.diff_prefix, self.hyp_pos):
            self._init_weights(m)
        # how much of the hypothesis reaches the decoder: 0 at first, so that a warm start begins as
        # the base decoder (nearly: the new positions still take a share of attention)
        self.hyp_gate = nn.Parameter(torch.zeros(())) if spec.corrector_init == "zero" else None
        self.corrector_init = spec.corrector_init
        self.copy = None
        if spec.corrector_copy:  # --corrector-copy: a pointer over the hypothesis's tokens
            self.copy = nn.ModuleDict({"q": nn.Linear(D, D), "k": nn.Linear(D, D), "gate": nn.Linear(D, 1)})
            for m in self.copy.values():
                self._init_weights(m)
            nn.init.constant_(self.copy["gate"].bias, 2.0)  # starts writing from the vocabulary (0.88)

    @property
    def row_width(self):
        return 2 * self.vector_dim + self.hyp_len

    @property
    def max_positions(self):  # the cache holds the slots, the hypothesis and the output
        return self.pos_emb.num_embeddings + 2 * self.num_prefix + self.hyp_len

    def rows(self, targets, hyp_vectors, hyp_ids):
        """(N, row_width) inputs from target vectors, hypothesis vectors and hypothesis token ids."""
        ids = torch.full((len(hyp_ids), self.hyp_len), -1.0)
        for i, x in enumerate(hyp_ids):
            x = x[:self.hyp_len]
            ids[i, :len(x)] = torch.tensor(x, dtype=torch.float)
        return torch.cat([targets.float().cpu(), hyp_vectors.float().cpu(), ids], dim=1)

    def standardize(self, vectors):
        """Vectors (N, Dv), or rows (N, row_width): their target vectors, standardised."""
        return super().standardize(vectors[:, :self.vector_dim])

    def bow_loss(self, rows, targets, ignore_id):
        return super().bow_loss(rows[:, :self.vector_dim], targets, ignore_id)

    def flops_per_token(self, target_len):
        return super().flops_per_token(target_len) * (2 * target_len + 3 * self.num_prefix) / (target_len + self.num_prefix)

    def forward(self, vectors=None, input_ids=None, cache=None):
        k, D = self.num_prefix, self.d_model
        parts, rows, n_prefix = [], {}, 0
        if vectors is not None:
            B, Dv = vectors.shape[0], self.vector_dim
            zt, zh = self.noised(self.standardize(vectors), cache), super().standardize(vectors[:, Dv:2 * Dv])
            ids = vectors[:, 2 * Dv:].long()  # (B, hyp_len), -1 past the end
            H = max(1, int((ids >= 0).sum(1).max()))  # the batch's longest hypothesis
            ids = ids[:, :H]
            parts.append(self.prefix(zt).view(B, k, D) + self.pos_emb.weight[:k])  # (B, k, D)
            slots = torch.cat([self.hyp_prefix(zh), self.diff_prefix(zt - zh)], 1).view(B, 2 * k, D)
            hyp = self.tok_emb(ids.clamp(min=0)) + self.hyp_pos.weight[:H] + self.hyp_segment  # (B, H, D)
            read = [slots + self.slot_pos, hyp * (ids >= 0)[..., None]]  # (B, 2k, D), (B, H, D)
            parts += [self.hyp_gate * x for x in read] if self.hyp_gate is not None else read
            n_prefix = 3 * k + H
            rows = self.vector_rows(zt)
            # attention never reads the padding after a short hypothesis: a sentence's output does
            # not depend on the hypotheses batched with it
            keep = torch.ones(B, self.max_positions if cache is not None else n_prefix + (
                input_ids.shape[1] if input_ids is not None else 0), dtype=torch.bool, device=vectors.device)
            keep[:, 3 * k:n_prefix] = ids >= 0
            rows["keep"] = keep
            if self.copy is not None:
                rows["copy_ids"] = ids  # (B, H), -1 past the end
            if cache is not None:
                cache.rows, cache.n_prefix = rows, n_prefix
        elif cache is not None:
            rows, n_prefix = cache.rows, cache.n_prefix
        if input_ids is not None:  # [BOS] and the output, numbered as in the base decoder
            start = cache.pos - n_prefix if cache is not None and vectors is None else 0
            pos = torch.arange(k + start, k + start + input_ids.shape[1], device=input_ids.device)
            parts.append(self.embed_tokens(input_ids, cache) + self.pos_emb(pos))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, 3k+H+T, D)
        if (cache.pos if cache is not None else 0) + x.shape[1] > self.max_positions:
            raise ValueError(f"sequence exceeds the corrector's {self.max_positions} positions")
        return self.run_blocks(x, rows, input_ids, cache, n_prefix if vectors is not None else 0)

    def run_blocks(self, x, rows, input_ids, cache, n_prefix):
        h = self.hidden_states(x, rows, cache)
        if self.copy is not None and n_prefix:  # the hypothesis's final states, the pointer's keys
            rows["copy_keys"] = self.copy["k"](self.ln_f(h[:, 3 * self.num_prefix:n_prefix]))  # (B, H, D)
        out = self.ln_f(h[:, n_prefix:])
        logits = self.token_logits(out, rows, input_ids, cache)
        if self.copy is None or out.shape[1] == 0:
            return logits
        return self.copy_mixture(out, logits, rows["copy_keys"], rows["copy_ids"])

    def copy_mixture(self, out, logits, keys, ids):
        """log(g p_vocab + (1 - g) p_copy) (B, T, V): p_copy puts each output position's attention over
        the hypothesis's tokens (keys (B, H, D), ids (B, H)) on those tokens' ids; g is a learned gate."""
        with torch.autocast(out.device.type, enabled=False):  # a mixture of probabilities: in fp32
            return self._copy_mixture(out.float(), logits.float(), keys.float(), ids)

    def _copy_mixture(self, out, logits, keys, ids):
        valid = ids >= 0  # (B, H)
        scores = self.copy["q"](out) @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5  # (B, T, H)
        attn = scores.masked_fill(~valid[:, None], -1e4).softmax(-1) * valid[:, None]  # none if no hypothesis
        p_copy = torch.zeros(logits.shape, dtype=torch.float, device=logits.device)
        p_copy.scatter_add_(2, ids.clamp(min=0)[:, None].expand(-1, out.shape[1], -1), attn)
        g = torch.sigmoid(self.copy["gate"](out))  # (B, T, 1)
        return torch.log(g * logits.softmax(-1) + (1 - g) * p_copy + 1e-9)


def warm_start(corrector, base_decoder):
    """The base decoder's weights into the corrector (everything but the corrector's own parts).
    --corrector-init aligned: hypothesis token j starts with the position embedding of the output
    position that writes token j (the query there finds its counterpart: copying is a match of
    positions)."""
    missing, unexpected = corrector.load_state_dict(base_decoder.state_dict(), strict=False)
    assert not unexpected, unexpected
    if corrector.corrector_init == "aligned":
        k = corrector.num_prefix  # output position k + j holds token j ([BOS] is 0) and writes token j + 1
        with torch.no_grad():
            corrector.hyp_pos.weight.copy_(corrector.pos_emb.weight[k:k + corrector.hyp_len])
    return missing


def corrupt(text, rate, words, rng):
    """`text` with each word, with probability `rate`, deleted, replaced by a word of `words` or
    swapped with the next (a third each)."""
    out, ws, i = [], text.split(), 0
    while i < len(ws):
        u = rng.random()
        if u < rate / 3:
            pass  # deleted
        elif u < 2 * rate / 3:
            out.append(rng.choice(words))
        elif u < rate and i + 1 < len(ws):
            out += [ws[i + 1], ws[i]]
            i += 1
        else:
            out.append(ws[i])
        i += 1
    return " ".join(out)


def mixed_rows(base, corrector, rows, texts, share, max_rate, log, batch_size=256, seed=0):
    """--hypothesis-mix: rows (N, row_width) with a share of them (a fixed draw per seed) reading
    corrupted copies of their own texts, at a rate drawn from 0 to max_rate, re-encoded."""
    import random
    rng = random.Random(seed)
    pick = sorted(rng.sample(range(len(texts)), round(share * len(texts))))
    if not pick:
        return rows
    words = [w for t in texts[:4096] for w in t.split()]
    hyps = [corrupt(texts[i], rng.uniform(0, max_rate), words, rng) for i in pick]
    t0 = time.time()
    rows = rows.clone()
    Dv = corrector.vector_dim
    rows[pick] = corrector.rows(rows[pick, :Dv], base.encode(hyps, batch_size).float().cpu(), base.tokenizer.encode(hyps))
    log(f"--hypothesis-mix {share:g}: {len(pick)} training rows read corrupted copies of their texts "
        f"(re-encoded in {time.time() - t0:.0f}s)")
    return rows


# ----------------------------------------------------------------------------------------------
# hypotheses of the base model, for training


def _file_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def noised_vectors(base, vectors, noise, seed=0):
    """vectors (N, Dv) plus Gaussian noise of std `noise` in the base's standardised units (a fixed
    draw per seed: the same rows every time)."""
    if not noise:
        return vectors
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(vectors.shape, generator=g)
    return vectors + noise * base.decoder.vector_std.to(vectors.device) * eps.to(vectors.device)


def base_hypotheses(base, vectors, no_repeat_ngram, batch_size=256, desc="base hypotheses"):
    hyps, chunk = [], 4 * batch_size
    # the ban as the corrector's recorded --hypothesis-repeat-ngram meant it: on token ids
    with progress(total=len(vectors), desc=desc, leave=False) as bar:
        for s in range(0, len(vectors), chunk):
            hyps += base.generate_from_vectors(vectors[s:s + chunk], batch_size=batch_size,
                                               no_repeat_ngram=no_repeat_ngram, no_repeat_match="exact")
            bar.update(min(chunk, len(vectors) - s))
    return hyps


NOISE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def calibrate_noise(base, vectors, texts, target_f1, no_repeat_ngram, log, batch_size=256, n=512, decode=None):
    """--hypothesis-noise auto: the std of NOISE_GRID at which the base's hypotheses of the first n
    training texts score the token F1 nearest target_f1 (its F1 on the validation split).
    decode(vectors[:n], noise) -> texts: another model's outputs instead of the base's (a later round)."""
    from recon.metrics import corpus_scores
    if decode is None:
        decode = lambda v, noise: base_hypotheses(base, noised_vectors(base, v, noise), no_repeat_ngram,  # noqa: E731
                                                  batch_size, desc=f"noise {noise:g}")
    vectors, texts, best = vectors[:n], texts[:n], None
    for noise in NOISE_GRID:
        f1 = corpus_scores(decode(vectors, noise), texts)["token_f1"]
        log(f"hypothesis noise {noise:g}: token F1 {f1:.2f} on {len(texts)} training texts (validation {target_f1:.2f})")
        if best is None or abs(f1 - target_f1) < best[1]:
            best = (noise, abs(f1 - target_f1))
        if f1 < target_f1:  # F1 falls as the noise grows: the next std is only further away
            break
    return best[0]


def _precision_key(base):
    """The part of a hypotheses key that says what the base ran in, where that differs from what such
    rows were always made in (their keys unchanged): "|bf16" when its encoder re-encoded them in bf16,
    "|generated-P" when its decoder wrote them in P other than before --generation-precision (bf16 on
    CUDA, fp32 on a CPU)."""
    generated = base.resolved_generation_precision()
    return (("|bf16" if base.encoder.resolved_precision() == "bf16" else "")
            + ("" if generated == resolve_precision("bf16-cuda-only", base.device) else f"|generated-{generated}"))


def _cached_rows(what, cache_dir, make, log, describe):
    """(rows, texts) = make(), kept in cache_dir under a key of the string `what`."""
    key = hashlib.sha256(what.encode()).hexdigest()[:24]
    path = os.path.join(cache_dir, f"hypotheses-{key}.pt") if cache_dir else None
    if path and os.path.exists(path):
        stored = torch.load(path, weights_only=True)
        log(f"{describe} read from {path}")
        return stored["rows"], stored["texts"]
    rows, hyps = make()
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save({"rows": rows, "texts": hyps}, tmp)
        os.replace(tmp, path)
    return rows, hyps


def hypothesis_rows(base, corrector, vectors, texts, cache_dir, no_repeat_ngram, log, batch_size=256, noise=0.0):
    """The corrector's input rows for `texts` (their target vectors given): the base's greedy
    hypotheses (decoded from the vectors plus `noise`, see noised_vectors), re-encoded. Cached in cache_dir
    by the base's weights, the texts, the ban and the noise. Returns (rows, hypothesis texts)."""
    from recon.checkpoint import WEIGHTS_FILE
    from recon.data import text_hash
    what = f"{_file_hash(os.path.join(base.folder, WEIGHTS_FILE))}|{text_hash(texts)}|{no_repeat_ngram}"
    what += f"|noise {noise:g}" if noise else ""  # clean hypotheses keep the key they always had
    what += _precision_key(base)

    def make():
        t0 = time.time()
        hyps = base_hypotheses(base, noised_vectors(base, vectors, noise), no_repeat_ngram, batch_size)
        # the row's target is the clean vector: the noise only makes the hypothesis as wrong as on unseen text
        rows = corrector.rows(vectors, base.encode(hyps, batch_size), base.tokenizer.encode(hyps))
        log(f"{len(texts)} hypotheses of the base decoded" + (f" (noise {noise:g})" if noise else "")
            + f" and re-encoded in {time.time() - t0:.0f}s")
        return rows, hyps
    return _cached_rows(what, cache_dir, make, log, f"{len(texts)} hypotheses of the base")


def noised_rows(base, rows, vector_dim, noise):
    """Corrector rows with their target vectors noised (noised_vectors); the rest as it was."""
    if not noise:
        return rows
    rows = rows.clone()
    rows[:, :vector_dim] = noised_vectors(base, rows[:, :vector_dim], noise)
    return rows


def round_outputs(previous, rows, no_repeat_ngram, batch_size=256, noise=0.0):
    """The previous round's corrector's greedy outputs from `rows`, their target vectors plus `noise`."""
    return previous.decode_rows(noised_rows(previous.base, rows, previous.decoder.vector_dim, noise),
                                batch_size=batch_size, no_repeat_ngram=no_repeat_ngram, no_repeat_match="exact")


def round_rows(previous, corrector, rows, texts, cache_dir, no_repeat_ngram, log, batch_size=256, noise=0.0):
    """A later round's rows (--previous-round): from each of `rows` (the base's hypotheses of `texts`),
    the previous corrector's one greedy step (its target vector plus `noise`, as for the base's
    hypotheses), re-encoded, beside the clean target vector. Cached by the previous corrector's
    weights. Returns (rows, output texts)."""
    from recon.checkpoint import WEIGHTS_FILE
    from recon.data import text_hash
    what = (f"round v2|{_file_hash(os.path.join(previous.folder, WEIGHTS_FILE))}|{text_hash(texts)}|"
            f"{hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]}|{no_repeat_ngram}|noise {noise:g}")
    what += _precision_key(previous.base)

    def make():
        t0 = time.time()
        outs, noised = [], noised_rows(previous.base, rows, corrector.vector_dim, noise)  # one draw for all rows
        with progress(total=len(rows), desc="previous round", leave=False) as bar:
            for s in range(0, len(rows), 4 * batch_size):
                outs += round_outputs(previous, noised[s:s + 4 * batch_size], no_repeat_ngram, batch_size)
                bar.update(min(4 * batch_size, len(rows) - s))
        base = previous.base
        new = corrector.rows(rows[:, :corrector.vector_dim], base.encode(outs, batch_size), base.tokenizer.encode(outs))
        log(f"{len(texts)} outputs of the previous round decoded (noise {noise:g}) and re-encoded in "
            f"{time.time() - t0:.0f}s")
        return new, outs
    return _cached_rows(what, cache_dir, make, log, f"{len(texts)} outputs of the previous round")


def adopt_base(cfg):
    """Set a corrector run's encoder, vocabulary, decoder shape and data to its base run's (the
    command line may not set them: TrainConfig checks), and its decoder type to the corrector."""
    import json
    from dataclasses import fields

    from recon.checkpoint import CONFIG_FILE, load_meta, resolve_checkpoint
    from recon.data import DataConfig
    from recon.decoder import DecoderSpec
    from recon.encoder import EncoderSpec
    from recon.tokenizer import TokenizerSpec
    folder = resolve_checkpoint(cfg.base_model)
    with open(os.path.join(folder, CONFIG_FILE)) as f:
        config = json.load(f)
    if config.get("decoder_type") == "corrector":  # a later round: the corrector's base is the run's base
        named = cfg.previous_round and os.path.abspath(resolve_checkpoint(cfg.previous_round))
        check(not named or named == os.path.abspath(folder),
              f"--previous-round {cfg.previous_round} and --base-model {cfg.base_model}, a corrector, disagree: "
              "give --base-model the corrector to start from")
        cfg.previous_round, cfg.base_model = os.path.abspath(folder), config["base_model"]
        return adopt_base(cfg)
    if cfg.previous_round:
        before = resolve_checkpoint(cfg.previous_round)
        with open(os.path.join(before, CONFIG_FILE)) as f:
            before_config = json.load(f)
        check(before_config.get("decoder_type") == "corrector"
              and os.path.abspath(before_config["base_model"]) == os.path.abspath(folder),
              f"--previous-round {cfg.previous_round} is not a corrector of {folder}")
        cfg.previous_round = os.path.abspath(before)
        config = {**config, **{k: before_config[k] for k in CORRECTOR_OWN if k in before_config}}  # it starts from those weights
        defaults = {f.name: f.default for f in fields(DecoderSpec)}
        differ = [k for k in CORRECTOR_OWN if getattr(cfg, k) not in (defaults[k], config.get(k, defaults[k]))]
        check(not differ, f"a later round keeps its previous round's {differ}: drop them")
    args = load_meta(folder).get("args", {})
    if config.get("cls_init") == "random-per-forward":
        raise ConfigError("--base-model: this base's encoder draws a new [CLS] at every forward, so a hypothesis "
                          "re-encoded twice has two vectors; correct a base with a deterministic encoder")
    for spec, source in ((EncoderSpec, config), (DecoderSpec, config), (TokenizerSpec, args), (DataConfig, args)):
        for f in fields(spec):
            if f.name in source and (f.name not in CORRECTOR_OWN or cfg.previous_round):
                setattr(cfg, f.name, source[f.name])
    cfg.decoder_type, cfg.base_model = "corrector", os.path.abspath(folder)
    return folder


def train_companions(cfg, log):
    """--companions N: train N more decoders of the base's vectors, each the base run's command at its next
    seeds with no evaluation, into cfg.output_dir/companion-seed<S> (one already trained to its last step is
    kept; one cut short is resumed), then re-seed, so that the corrector trains as it would without them.
    Returns their folders, for the corrector's config ([] for a plain run or none asked for)."""
    from recon.checkpoint import list_checkpoints, load_meta, resolve_checkpoint
    from recon.config import TrainConfig
    from recon.model import ReconConfig
    from recon.prepare import set_seed
    from recon.training import train
    if not (cfg.base_model and cfg.companions):
        return []
    folder = resolve_checkpoint(cfg.base_model)
    if ReconConfig.load(folder).encoder_spec.trains:
        raise ConfigError(f"--companions: {folder} trained its encoder, so another decoder would decode its own "
                          "encoder's vectors, not the base's; companions need a base with a frozen encoder")
    args = load_meta(folder)["args"]
    folders = []
    for seed in range(args["seed"] + 1, args["seed"] + 1 + cfg.companions):
        out = os.path.abspath(os.path.join(cfg.output_dir, f"companion-seed{seed}"))
        steps = list_checkpoints(out)
        meta = load_meta(os.path.join(out, f"checkpoint-{steps[-1]}")) if steps else {}
        if not steps or meta.get("step", 0) < meta.get("max_steps", 0):
            log(f"companion decoder {len(folders) + 1} of {cfg.companions}: the base run's flags at --seed {seed}, "
                f"into {out}")
            flags = {k: v for k, v in args.items() if k in TrainConfig.__dataclass_fields__}
            train(TrainConfig(**{**flags, "seed": seed, "output_dir": out, "run_name": None, "no_eval": True,
                                 "resume": "auto" if steps else None, "overwrite": False}), log)
        folders.append(out)
    set_seed(cfg.seed)
    return folders


# ----------------------------------------------------------------------------------------------
# correction at inference


@torch.no_grad()
def closest(dec, pools, encode, target, k):
    """Each sentence's k candidates (of its pool of texts) whose vectors are closest to its target, closest first."""
    z = dec.standardize(encode([t for p in pools for t in p])).cpu()
    who = torch.tensor([i for i, p in enumerate(pools) for _ in p])
    sim = torch.nn.functional.cosine_similarity(z, target[who], dim=-1)
    out, at = [], 0
    for p in pools:
        out.append([p[j] for j in sim[at:at + len(p)].argsort(descending=True)[:k].tolist()])
        at += len(p)
    return out


def moved_slot(dec, slot, vectors, fresh, encode, target, rate, feedback, generator):
    """The corrector's target slot moved by `rate` times the residual (v* - E(h)) of each sentence's closest
    new candidate h of `fresh`; feedback=False: by another sentence's residual (a new permutation)."""
    best = [row[0] for row in closest(dec, [list(dict.fromkeys(f)) for f in fresh], encode, target, 1)]
    residual = vectors.cpu() - encode(best).cpu().to(vectors.dtype)
    if not feedback:
        residual = residual[torch.randperm(len(residual), generator=generator)]
    return slot + rate * residual


def correct(model, vectors, steps, beam=1, feedback=True, batch_size=256, no_repeat_ngram=0, num_beams=1,
            length_penalty=1.0, log=None, no_repeat_match="loose", start=None, max_seconds=0.0, rate=None, seed=0,
            feedback_steps=0, feedback_beam=None, correction_rate=0.0):
    """Correct the base's reconstructions of `vectors` (N, Dv) for `steps` steps.

    model: a corrector ReconModel (model.base is the base), or a plain one, whose loop moves the vector
    it decodes instead (recon/feedback.py: `rate`, `seed`). beam: keep this many candidates per
    sentence, those whose re-encoded vectors are closest to the target (vec2text's sequence beam;
    each step decodes every candidate with a beam of this width). feedback=False: the hypothesis
    vector is replaced by the training mean (zero once standardised), the no-feedback ablation.
    start: the first hypotheses (a text, or a list of texts, per vector) instead of the base's.
    feedback_steps (a corrector): first run this many steps of vector feedback on the base (at `rate`,
    keeping `feedback_beam` candidates, `beam` if None; feedback=False runs its ablation too), then
    correct the `beam` closest it kept; the outputs list the feedback's steps, then the corrector's.
    correction_rate > 0 (a corrector): each step moves the rows' target slot as vector feedback moves the base's
    input (moved_slot; the permutations of feedback=False drawn from `seed`). max_seconds > 0: no
    step starts after this many seconds (a machine lent for a fixed time); fewer steps are returned.
    model.companions (ReconModel.add_companions): other decoders of the same vectors whose vector feedback joins
    the loop (recon.feedback.pooled_feedback). Returns (outputs per step, step 0 the base's or `start`; seconds per step).
    """
    from recon.feedback import encode_once, feedback_loop, out_of_time, pooled_feedback
    gen = dict(batch_size=batch_size, no_repeat_ngram=no_repeat_ngram, no_repeat_match=no_repeat_match,
               length_penalty=length_penalty)
    decoders = [model.base or model, *model.companions]  # the plain decoders whose vector feedback runs
    encode = encode_once(decoders[0], batch_size)  # each candidate is encoded once, by the loops and the corrector
    loop_args = dict(feedback=feedback, rate=rate, seed=seed, num_beams=num_beams, log=log, start=start,
                     max_seconds=max_seconds, encode=encode, **gen)

    def loop(n, k, return_kept=False):
        return (pooled_feedback(decoders, vectors, n, k, **loop_args, return_kept=return_kept) if len(decoders) > 1
                else feedback_loop(decoders[0], vectors, n, k, **loop_args, return_kept=return_kept))
    if model.base is None:
        return loop(steps, beam)
    if rate is not None and not feedback_steps:
        raise ValueError("a corrector reads the hypothesis's vector itself: the feedback rate is for a plain "
                         "decoder's loop (recon/feedback.py), or for feedback_steps on its base first")
    base, dec = model.base, model.decoder
    before, before_seconds, carried = [], [], 0.0
    if feedback_steps:  # vector feedback on the base first; the corrector takes up all it kept
        before, before_seconds, kept = loop(feedback_steps, feedback_beam or beam, return_kept=True)
        start = [[h for _, h in row] for row in kept]  # closest first: its first is the feedback's output
        before, before_seconds, carried = before[:-1], before_seconds[:-1], before_seconds[-1]
    t0 = time.time()
    if start is None:
        start = base.generate_from_vectors(vectors, num_beams=num_beams, **gen)
    cands = [list(dict.fromkeys([h] if isinstance(h, str) else h))[:beam] for h in start]
    outputs, seconds = before + [[row[0] for row in cands]], before_seconds + [carried + time.time() - t0]
    target = dec.standardize(vectors).cpu()
    slot = vectors.cpu()  # the target slot of the rows: moved at correction_rate, else the target itself
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        if out_of_time(seconds, max_seconds, len(before) + steps, log):
            break
        t0 = time.time()
        flat = [c for row in cands for c in row]
        owner = torch.tensor([i for i, row in enumerate(cands) for _ in row])
        hv = encode(flat) if feedback else dec.vector_mean.cpu().expand(len(flat), -1)
        rows = dec.rows(slot[owner], hv, model.tokenizer.encode(flat))
        if beam == 1:
            cands = [[x] for x in model.decode_rows(rows, **gen)]
            fresh = cands
        else:
            _, beams = model.decode_rows(rows, num_beams=beam, return_all=True, **gen)
            fresh = [[] for _ in cands]
            for i, row in zip(owner.tolist(), beams):
                fresh[i] += [text for text, _ in row]  # the candidates so far compete with the new ones
            cands = closest(dec, [list(dict.fromkeys(c + f)) for c, f in zip(cands, fresh)], encode, target, beam)
        if correction_rate:
            slot = moved_slot(dec, slot, vectors, fresh, encode, target, correction_rate, feedback, generator)
        outputs.append([row[0] for row in cands])
        seconds.append(time.time() - t0)
        if log:
            log(f"correction step {len(outputs) - 1 - len(before)} of {steps}: {seconds[-1]:.1f}s "
                f"({seconds[-1] / max(len(vectors), 1):.4f}s a sentence)")
    return outputs, seconds


# ----------------------------------------------------------------------------------------------
# reports: every step, beside the ablations


ABLATIONS = ("no-feedback", "random-target", "reference")  # evaluate.py --correction-ablations


def _scored(model, preds, texts, target, batch_size):
    """(BLEU, exact match, token F1 and mean standardised cosine of `preds`; their Scores for the paired tests)."""
    from recon.evaluation import cosine
    from recon.metrics import corpus_scores, example_scores
    from recon.significance import Scores
    per_example = [example_scores(p, t) for p, t in zip(preds, texts)]
    s = corpus_scores(preds, texts, per_example)
    cos = cosine(model.decoder.standardize(model.encode(preds, batch_size)), target)  # (N,)
    row = {"bleu": s["bleu"], "exact_match": s["exact_match"], "token_f1": s["token_f1"],
           "cosine_standardized": float(cos.mean())}
    return row, Scores(preds, texts, per_example, extra={"cosine_standardized": cos.tolist()})


def evaluate_correction(model, texts, steps, beam=1, seed=0, batch_size=256, no_repeat_ngram=0, output_dir=None,
                        log=print, no_repeat_match="loose", ablations=ABLATIONS, rate=None, feedback_steps=0,
                        feedback_beam=None, correction_rate=0.0, num_beams=1):
    """BLEU, exact match, token F1 and standardised cosine after each correction step of `texts`,
    for the corrector and, as `ablations` names them, two ablations: no-feedback (the hypothesis
    vector replaced by the training mean; the same sequence beam) and random-target (Gaussian vectors
    matched to the real ones); and reference, a check of what it reads: one greedy step from the
    reference itself as the hypothesis (a corrector that reads its hypothesis keeps a right one).
    A plain model (no corrector) runs recon/feedback.py's loop at `rate`: its no-feedback ablation moves
    each vector by another sentence's residual, and it has no reference check (a right hypothesis has no
    residual, so its step decodes the target vector again). feedback_steps, correction_rate (a corrector): as
    correct(); the no-feedback ablation takes every loop's feedback away. num_beams > 1: every loop starts from the
    base's beams, and its greedy pass is scored beside them. Writes correction.json, .md and .png to output_dir."""
    from recon.evaluation import matched_random_vectors
    from recon.feedback import DEFAULT_RATE
    from recon.significance import paired
    vectors = model.encode(texts, batch_size)
    target = model.decoder.standardize(vectors)
    # no feedback keeps the sequence beam: it takes away the corrector's input of the hypothesis's
    # vector alone, not the choice among candidates by their vectors
    unknown = set(ablations) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablations {sorted(unknown)}; choose among {', '.join(ABLATIONS)}")
    every = {"no-feedback": ("no feedback", dict(beam=beam, feedback=False)),
             "random-target": ("random target", dict(beam=beam, vectors=matched_random_vectors(vectors, seed))),
             # greedy: a sequence beam keeps the old candidates, and the reference is always the closest
             "reference": ("reference as hypothesis", dict(beam=1, start=texts, steps=1, feedback_steps=0))}
    plain = model.base is None
    if plain and "reference" in ablations:
        log("vector feedback: no 'reference as hypothesis' check (a right hypothesis leaves no residual to move by)")
        ablations = [a for a in ablations if a != "reference"]
    conditions = {"correction": dict(beam=beam), **dict(every[a] for a in ABLATIONS if a in ablations)}
    result = {"steps": steps, "beam": beam, "num_beams": num_beams, "num_examples": len(texts),
              "no_repeat_ngram": no_repeat_ngram, "no_repeat_match": no_repeat_match, "conditions": {},
              **({"loop": "vector feedback", "rate": DEFAULT_RATE if rate is None else rate} if plain else
                 {"loop": "corrector", "feedback_steps": feedback_steps, "feedback_beam": feedback_beam or beam,
                  **({"rate": DEFAULT_RATE if rate is None else rate} if feedback_steps else {}),
                  **({"correction_rate": correction_rate} if correction_rate else {})}),
              **({"companions": [c.folder for c in model.companions]} if model.companions else {})}
    if plain:
        rate = result["rate"]
    ends = {}  # (condition, step) -> Scores of its outputs, for the paired tests
    for name, how in conditions.items():
        how = dict(how)
        v, n = how.pop("vectors", vectors), how.pop("steps", steps)
        how.setdefault("feedback_steps", feedback_steps)
        outputs, seconds = correct(model, v, n, batch_size=batch_size, no_repeat_ngram=no_repeat_ngram,
                                   no_repeat_match=no_repeat_match, log=lambda line: log(f"{name}: {line}"),
                                   rate=rate if plain or how["feedback_steps"] else None, seed=seed,
                                   feedback_beam=feedback_beam, correction_rate=correction_rate,
                                   num_beams=num_beams, **how)
        curve = []
        for step, preds in enumerate(outputs):
            row, scores = _scored(model, preds, texts, target, batch_size)
            curve.append({"step": step, **row, "seconds": seconds[step],
                          "seconds_per_sentence": seconds[step] / len(texts)})
            if step in (0, len(outputs) - 1) and name in ("correction", "no feedback"):
                ends[name, step] = scores
        result["conditions"][name] = {"curve": curve, "predictions": outputs[-1],  # and, for recon.significance:
                                      "cosine_standardized": scores.values["cosine_standardized"].tolist()}
        last = curve[-1]
        log(f"{name}: BLEU {curve[0]['bleu']:.2f} -> {last['bleu']:.2f}, exact match {last['exact_match']:.2f}%, "
            f"standardised cosine {curve[0]['cosine_standardized']:.3f} -> {last['cosine_standardized']:.3f}")
    if num_beams > 1:  # step 0 is a beam search's closest beam: the base's greedy pass beside it
        greedy = (model.base or model).generate_from_vectors(
            vectors, batch_size=batch_size, no_repeat_ngram=no_repeat_ngram, no_repeat_match=no_repeat_match)
        result["greedy"], ends["greedy", 0] = _scored(model, greedy, texts, target, batch_size)
    last = ("correction", steps + feedback_steps)
    against = {"the base's single pass": ("correction", 0), "the base's greedy pass": ("greedy", 0),
               "no feedback": ("no feedback", steps + feedback_steps)}
    result["tests"] = {name: paired(ends[last], ends[other], seed=seed) for name, other in against.items()
                       if other in ends and other != last}
    if output_dir:
        write_correction(result, output_dir)
    return result


def write_correction(result, output_dir):
    """evaluate_correction's result as correction.json, correction.md and correction.png in output_dir."""
    import json
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "correction.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, "correction.md"), "w") as f:
        f.write(correction_table(result) + "\n")
    plot_correction(result, os.path.join(output_dir, "correction.png"))


def correction_table(result):
    beams = result.get("num_beams", 1)
    all_beams = result.get("loop") == "vector feedback" or result.get("feedback_steps")
    first_pass = ("single pass" if beams == 1 else f"first pass of {beams} beams, " +
                  ("every beam a candidate (the closest is the rerank's choice)" if all_beams else "its top beam"))
    if result.get("loop") == "vector feedback":
        head = (f"Vector feedback on {result['num_examples']} texts: {result['steps']} steps of rate {result['rate']:g}, "
                f"{result['beam']} beam(s) a step and the {result['beam']} closest candidates kept; step 0 is the "
                f"decoder's {first_pass}; 'no feedback' moves each vector by another sentence's residual.")
    else:
        first = (f"{result['feedback_steps']} steps of vector feedback on the base (rate {result['rate']:g}, "
                 f"{result.get('feedback_beam', result['beam'])} beams), then "
                 if result.get("feedback_steps") else "")
        moved = (f" (its target slot moved by {result['correction_rate']:g} of the residual a step)"
                 if result.get("correction_rate") else "")
        head = (f"Correction of {result['num_examples']} texts, {first}{result['steps']} steps of the corrector{moved}, "
                f"sequence beam {result['beam']}; step 0 is the base model's {first_pass} (for 'reference as "
                "hypothesis', the reference itself: one greedy step from it shows whether the corrector keeps a right "
                "hypothesis).")
    if result.get("companions"):
        head += (f" The vector feedback runs on {len(result['companions']) + 1} decoders of the same vectors (the base and "
                 f"{', '.join(result['companions'])}), every step writing the closest of all their candidates (step 0: "
                 "of all their first passes).")
    lines = [head, "",
             "| condition | step | BLEU | exact match % | token F1 | standardised cosine | s per sentence |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    if "greedy" in result:  # beside a first pass of beams: the base's greedy single pass
        g = result["greedy"]
        lines.append(f"| the base's greedy pass | 0 | {g['bleu']:.2f} | {g['exact_match']:.2f} | {g['token_f1']:.2f} | "
                     f"{g['cosine_standardized']:.3f} | |")
    for name, c in result["conditions"].items():
        for r in c["curve"]:
            lines.append(f"| {name} | {r['step']} | {r['bleu']:.2f} | {r['exact_match']:.2f} | {r['token_f1']:.2f} | "
                         f"{r['cosine_standardized']:.3f} | {r['seconds_per_sentence']:.4f} |")
    if result.get("tests"):
        from recon.significance import SAMPLES, paired_line
        end = result["steps"] + result.get("feedback_steps", 0)
        lines += ["", f"The correction after step {end}, paired on {SAMPLES:,} resamples of the texts "
                  "(95% intervals of the difference; the same weights, one seed):"]
        lines += [f"- against {paired_line(name, t, ('bleu', 'token_f1', 'cosine_standardized'))}"
                  for name, t in result["tests"].items()]
    return "\n".join(lines)


def plot_correction(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, c in result["conditions"].items():
        if name == "reference as hypothesis":  # a check, not a curve: its step 0 is the reference
            continue
        steps = [r["step"] for r in c["curve"]]
        for ax, key in zip(axes, ("bleu", "exact_match", "cosine_standardized")):
            ax.plot(steps, [r[key] for r in c["curve"]], marker="o", label=name)
    for ax, title in zip(axes, ("BLEU", "exact match %", "standardised cosine")):
        ax.set_title(title)
        ax.set_xlabel("correction step (0: base)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
