"""The encoder and decoder joined: encode, generate from vectors, reconstruct; save and load.

A checkpoint is a folder:
  config.json         ReconConfig (everything needed to rebuild the model)
  model.safetensors   the decoder, plus the encoder when it was fine-tuned
  decoder_spm.model   the decoder's SentencePiece vocabulary (or decoder_tokenizer/)
  meta.json           how it was made (written by the training code, not read here)
A frozen encoder is not copied: its name or path is recorded and checked on load.
"""

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from recon.decoder import Decoder
from recon.decoding import beam_search, greedy
from recon.encoder import DEFAULT_ENCODER, SCRATCH, build_encoder, fingerprint, set_trainable
from recon.errors import ReconError
from recon.tokenizer import load_decoder_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ReconError):
    pass


@dataclass
class ReconConfig:
    encoder: str
    vector_dim: int
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    decoder_tokenizer: str = "sentencepiece"
    representation: str = "cls"
    layer: int = -1
    max_length: int = 32  # encoder tokens
    finetune_encoder: bool = False
    finetune_layers: int = 0  # 0: all layers (when fine-tuned)
    encoder_init: str = "pretrained"  # or "random": the architecture with fresh weights
    cls_init: str = "token"
    scratch_tokenizer: str = ""  # encoder "scratch": whose tokenizer it uses
    scratch_size: list = field(default_factory=lambda: [256, 4, 4])  # width, layers, heads
    encoder_fingerprint: dict = field(default_factory=dict)
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1
    num_prefix: int = 1
    max_target_len: int = 64  # decoder tokens

    def save(self, folder):
        with open(os.path.join(folder, CONFIG_FILE), "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, folder):
        path = os.path.join(folder, CONFIG_FILE)
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise CheckpointError(f"{folder} is not a recon checkpoint: it has no {CONFIG_FILE}") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is corrupt ({e}); restore it or use another checkpoint") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class ReconModel(nn.Module):
    def __init__(self, config, encoder, decoder_tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = decoder_tokenizer
        self.decoder = Decoder(
            config.vector_dim, config.vocab_size, config.d_model, config.n_layer, config.n_head,
            config.dropout, config.num_prefix, config.max_target_len,
        )
        set_trainable(self.encoder, self.trains_encoder, config.finetune_layers)

    @property
    def trains_encoder(self):
        return self.config.finetune_encoder or self.config.encoder == SCRATCH

    @property
    def saves_encoder(self):
        """A frozen pretrained encoder is recorded by name; any other is saved with the decoder."""
        return self.trains_encoder or self.config.encoder_init != "pretrained"

    @classmethod
    def from_encoder(cls, encoder, decoder_tokenizer, encoder_name, **kwargs):
        """A fresh model around an Encoder and a decoder vocabulary (starts a new run).

        encoder_name: the name or path the encoder was loaded from; recorded for loading.
        kwargs: the other ReconConfig fields (decoder sizes, encoder modes).
        """
        t = decoder_tokenizer
        config = ReconConfig(
            encoder=encoder_name,
            vector_dim=encoder.dim, vocab_size=t.vocab_size, bos_id=t.bos_id, eos_id=t.eos_id, pad_id=t.pad_id,
            decoder_tokenizer=t.kind, representation=encoder.representation, layer=encoder.layer,
            max_length=encoder.max_length, cls_init=encoder.cls_init,
            encoder_fingerprint=getattr(encoder, "base_fingerprint", None) or fingerprint(encoder.model), **kwargs,
        )
        return cls(config, encoder, decoder_tokenizer)

    @property
    def device(self):
        return next(self.decoder.parameters()).device

    def train(self, mode=True):
        super().train(mode)
        if not self.trains_encoder:
            self.encoder.eval()  # a frozen encoder never runs with dropout
        return self

    @contextmanager
    def _eval_mode(self):
        """No dropout inside; the mode the model had is given back after."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------------------------------
    # the three things a user does

    def encode(self, texts, batch_size=256):
        """list of str -> (N, vector_dim) tensor of sentence vectors (always without dropout)."""
        with self._eval_mode():
            return self.encoder.encode(list(texts), batch_size=batch_size)

    @torch.no_grad()
    def generate_from_vectors(self, vectors, num_beams=1, length_penalty=1.0, max_new_tokens=None, batch_size=256,
                              return_all=False):
        """(N, vector_dim) vectors from anywhere -> list of N strings.

        return_all (beam search): also return every beam, best first, as N lists of (text, score).
        """
        vectors = torch.as_tensor(vectors)
        if vectors.dim() == 1:
            vectors = vectors[None]
        if vectors.dim() != 2 or vectors.shape[1] != self.config.vector_dim:
            raise ValueError(
                f"vectors of shape {tuple(vectors.shape)} do not fit this model: it decodes "
                f"(N, {self.config.vector_dim}) vectors ({self.config.representation} of {self.config.encoder})"
            )
        if return_all and num_beams == 1:
            raise ValueError("return_all needs num_beams > 1")
        c, out, beams = self.config, [], []
        with self._eval_mode():
            for start in range(0, len(vectors), batch_size):
                v = vectors[start:start + batch_size].to(self.device, torch.float32)
                if return_all:  # every beam decoded to text only when asked for
                    ids, all_ids = beam_search(self.decoder, v, c.bos_id, c.eos_id, num_beams, length_penalty,
                                               max_new_tokens, return_all=True)
                    beams.extend([(self.tokenizer.decode(x), s) for x, s in row] for row in all_ids)
                elif num_beams > 1:
                    ids = beam_search(self.decoder, v, c.bos_id, c.eos_id, num_beams, length_penalty, max_new_tokens)
                else:
                    ids = greedy(self.decoder, v, c.bos_id, c.eos_id, max_new_tokens)
                out.extend(self.tokenizer.decode(x) for x in ids)
        return (out, beams) if return_all else out

    def reconstruct(self, texts, **generate_kwargs):
        """list of str -> list of str: each text through its vector and back."""
        return self.generate_from_vectors(self.encode(texts), **generate_kwargs)

    # ------------------------------------------------------------------------------------------
    # training

    def loss(self, vectors, targets, reduction="mean"):
        """Teacher-forced cross-entropy. targets: (B, T) token ids ending in [EOS], padded with
        pad_id. Returns the mean (or with reduction="sum" the sum) of the loss over real tokens."""
        B = targets.shape[0]
        bos = torch.full((B, 1), self.config.bos_id, dtype=targets.dtype, device=targets.device)
        inputs = torch.cat([bos, targets[:, :-1]], dim=1)  # (B, T): [BOS] t1 .. t_{T-1}
        logits = self.decoder(vectors, inputs)  # (B, T, V)
        labels = targets.masked_fill(targets == self.config.pad_id, -100)
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                           reduction=reduction)

    # ------------------------------------------------------------------------------------------
    # save and load

    def save_pretrained(self, folder):
        os.makedirs(folder, exist_ok=True)
        self.config.save(folder)
        state = {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        if self.saves_encoder:
            state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, os.path.join(folder, WEIGHTS_FILE))
        self.tokenizer.save(folder)

    @classmethod
    def from_pretrained(cls, path, encoder=None, representation=None, device=None):
        """Load a checkpoint folder, or the latest checkpoint of a run folder.

        encoder: a name or path to use instead of the recorded one (the same model elsewhere).
        representation: refuse a checkpoint trained on another representation than this.
        """
        folder = resolve_checkpoint(path)
        config = ReconConfig.load(folder)
        if representation is not None and representation != config.representation:
            raise CheckpointError(
                f"{folder} decodes {config.representation!r} vectors, not {representation!r}; "
                "use a checkpoint trained with that --representation"
            )
        enc = build_encoder(encoder or config.encoder, config.representation, config.layer, config.max_length,
                            config.cls_init, config.encoder_init, config.scratch_tokenizer or DEFAULT_ENCODER,
                            tuple(config.scratch_size))
        got = enc.base_fingerprint
        if config.encoder_fingerprint and got != config.encoder_fingerprint:
            raise CheckpointError(
                f"the encoder {encoder or config.encoder!r} ({got}) is not the one this checkpoint was "
                f"trained on ({config.encoder_fingerprint}); pass encoder= the right one"
            )
        try:
            dec_tok = load_decoder_tokenizer(config.decoder_tokenizer, folder)
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{folder}: the decoder vocabulary is missing or corrupt ({e})") from None
        self = cls(config, enc, dec_tok)
        self.load_weights(folder)
        if device is not None:
            self.to(device)
        return self.eval()

    def load_weights(self, folder):
        """Load model.safetensors (safetensors only: nothing in a checkpoint is executed)."""
        path = os.path.join(folder, WEIGHTS_FILE)
        try:
            state = load_file(path)
        except FileNotFoundError:
            raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}: the checkpoint is incomplete; use another") from None
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{path} is corrupt ({e}); use another checkpoint") from None
        parts = [("decoder.", self.decoder)] + ([("encoder.", self.encoder)] if self.saves_encoder else [])
        for prefix, module in parts:
            try:
                module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            except RuntimeError as e:
                raise CheckpointError(f"{path} does not fit its config.json ({str(e).splitlines()[0]})") from None


def checkpoint_step(name):
    """checkpoint-120 -> 120; anything else -> None."""
    prefix = "checkpoint-"
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


def resolve_checkpoint(path):
    """A checkpoint folder as given, or a run folder's latest complete checkpoint-N."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint at {path}: the folder does not exist")
    steps = [(s, n) for n in os.listdir(path) if (s := checkpoint_step(n)) is not None
             and os.path.isfile(os.path.join(path, n, CONFIG_FILE))]
    if not steps:
        raise CheckpointError(f"{path} holds no checkpoint (no {CONFIG_FILE}, no checkpoint-N folder)")
    return os.path.join(path, max(steps)[1])
