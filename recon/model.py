"""The encoder and decoder joined: encode, generate from vectors, reconstruct; save and load.

A checkpoint is a folder (recon/checkpoint.py has the layout): ReconModel writes config.json, the
weights and the decoder vocabulary. A frozen pretrained encoder is not copied: its name or path
is recorded and checked on load.
"""

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from recon.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_meta, resolve_checkpoint
from recon.decoder import DecoderSpec
from recon.decoding import ValidText, beam_search, canonical_pieces, greedy
from recon.device import resolve_precision
from recon.encoder import EncoderSpec, fingerprint, set_trainable
from recon.spec import ModelSpecs, with_unrecorded
from recon.tokenizer import load_decoder_tokenizer

__all__ = ["CheckpointError", "ReconConfig", "ReconModel", "resolve_checkpoint"]


@dataclass(kw_only=True)
class ReconConfig(ModelSpecs, DecoderSpec, EncoderSpec):
    """Everything needed to rebuild a model: its encoder and decoder specs, and what the
    encoder and the decoder vocabulary turned out to be."""

    vector_dim: int
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    decoder_tokenizer: str = "sentencepiece"
    encoder_fingerprint: dict = field(default_factory=dict)
    base_model: str = ""  # a corrector's: the checkpoint of the base model it corrects
    companions: list = field(default_factory=list)  # a corrector's: more decoders of its base's vectors (--companions)

    def __post_init__(self):  # each part checks its own fields
        self.encoder_spec, self.decoder_spec

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
        if "scratch_size" in d:  # written before the specs (commit bacd761 and earlier)
            d["scratch_d_model"], d["scratch_layers"], d["scratch_heads"] = d.pop("scratch_size")
        d = with_unrecorded(d)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def recorded_precisions(folder):
    """The --encoder-precision and --generation-precision a checkpoint's run ran in (runs before the flags:
    bf16-cuda-only), as set_precisions' arguments; none for a checkpoint saved without a run's meta.json."""
    args = load_meta(folder).get("args")
    return {part: with_unrecorded(args)[f"{part}_precision"] for part in ("encoder", "generation")} if args else {}


class ReconModel(nn.Module):
    def __init__(self, config, encoder, decoder_tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = decoder_tokenizer
        self.decoder = config.decoder_spec.build(config.vector_dim, config.vocab_size)
        set_trainable(self.encoder, self.trains_encoder, config.finetune_layers)
        self.__dict__["_base"] = None  # a corrector's base model: not a submodule (its weights are its own)
        self.__dict__["_companions"] = []  # other decoders of the same vectors, for vector feedback (not submodules)
        self.correction_steps = 1  # a corrector's steps when none are asked for
        self.folder = None  # the checkpoint it was loaded from

    @property
    def base(self):
        """A corrector's base model (recon/corrector.py), whose output it corrects; else None."""
        return self.__dict__["_base"]

    def attach_base(self, base):
        self.__dict__["_base"] = base

    @property
    def companions(self):
        """Other plain decoders of the same vectors whose vector feedback joins this model's (or its base's):
        every step of the loop writes the closest of all their candidates (recon.feedback.pooled_feedback)."""
        return self.__dict__["_companions"]

    def add_companions(self, paths, device=None):
        """Load plain checkpoints of the same encoder and representation (the same command at other seeds,
        say) as companions: vector feedback (correction_steps on a plain model, feedback_steps on a
        corrector) then runs on every decoder and pools their candidates. Returns self."""
        own = self.base or self
        for path in paths:
            other = type(self).from_pretrained(path, device=device)
            if other.base is not None:
                raise CheckpointError(f"{path} is a corrector; a companion is a plain decoder of the same vectors "
                                      "(a run of the same command at another --seed)")
            if own.config.encoder_spec.trains or other.config.encoder_spec.trains:
                raise CheckpointError(f"{path} or this model trained its encoder: each decodes its own encoder's "
                                      "vectors, not the same ones; companions need a frozen encoder")
            mine = (own.config.encoder_fingerprint, own.config.representation, own.config.vector_dim)
            theirs = (other.config.encoder_fingerprint, other.config.representation, other.config.vector_dim)
            if mine != theirs:
                raise CheckpointError(f"{path} decodes {other.config.representation!r} vectors of {other.config.encoder}, "
                                      f"not {own.config.representation!r} vectors of {own.config.encoder}: a companion "
                                      "must decode the same vectors (the same --encoder and --representation)")
            other.encoder = own.encoder  # one encoder for all (the same weights, checked above)
            self.companions.append(other.eval())
        return self

    def set_precisions(self, encoder=None, generation=None):
        """--encoder-precision of the encoder and --generation-precision of this model's decoder and of its
        base's (a corrector's), those given (None: left as they are)."""
        if encoder:
            self.encoder.precision = encoder
        for model in ((self,) if self.base is None else (self, self.base)) if generation else ():
            model.decoder.generation_precision = generation

    def resolved_generation_precision(self):
        """What generation runs in on this model's device: bf16 or fp32."""
        return resolve_precision(self.decoder.generation_precision, self.device)

    @property
    def trains_encoder(self):
        """A corrector never trains its encoder: it is its base's, which re-encodes the hypotheses."""
        return self.config.encoder_spec.trains and not self.config.base_model

    @property
    def saves_encoder(self):
        """A corrector's encoder is saved with its base (a fine-tuned one too), not again with it."""
        return self.config.encoder_spec.saved_with_decoder and not self.config.base_model

    @classmethod
    def from_encoder(cls, encoder, decoder_tokenizer, encoder_spec, decoder_spec=None, base_model=""):
        """A fresh model around an Encoder (built from encoder_spec) and a decoder vocabulary."""
        read = {"representation": encoder.representation, "layer": encoder.layer, "max_length": encoder.max_length,
                "cls_init": encoder.cls_init}
        if any(getattr(encoder_spec, k) != v for k, v in read.items()):
            raise ValueError(f"the encoder reads {read}, its spec says otherwise: {encoder_spec}")
        t = decoder_tokenizer
        config = ReconConfig(
            **asdict(encoder_spec), **asdict(decoder_spec or DecoderSpec()),
            vector_dim=encoder.dim, vocab_size=t.vocab_size, bos_id=t.bos_id, eos_id=t.eos_id, pad_id=t.pad_id,
            decoder_tokenizer=t.kind,
            encoder_fingerprint=getattr(encoder, "base_fingerprint", None) or fingerprint(encoder.model),
            base_model=base_model,
        )
        return cls(config, encoder, decoder_tokenizer)

    def decoder_parameters(self):
        return sum(p.numel() for p in self.decoder.parameters())

    @property
    def device(self):
        return next(self.decoder.parameters()).device

    def train(self, mode=True):
        super().train(mode)
        if not (self.trains_encoder and self.config.encoder_dropout):
            self.encoder.eval()  # no dropout: a frozen encoder, and a trained one unless --encoder-dropout
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
                              return_all=False, no_repeat_ngram=0, correction_steps=None, correction_beam=1,
                              no_repeat_match="loose", temperature=0.0, seed=0, rerank="none", feedback_rate=None,
                              feedback_steps=0, feedback_beam=None, correction_rate=0.0, log=None):
        """(N, vector_dim) vectors from anywhere -> list of N strings.

        rerank="embedding" (beam search; train.py's default evaluation is 8 beams so reranked):
        each sentence keeps the beam whose re-encoded vector is closest to its target vector.

        return_all (beam search): also return every beam, best first, as N lists of (text, score).
        no_repeat_ngram: never write the same n-gram of decoder tokens twice (0: off); no_repeat_match:
        loose (tokens compared as the metrics compare words: case, accents and punctuation ignored)
        or exact (token ids).
        correction_steps, correction_beam: a corrector checkpoint: the base model's output, corrected
        this many times (default self.correction_steps), keeping correction_beam candidates per
        sentence by the cosine of their re-encoded vectors to the target. A plain checkpoint: its
        own output corrected through its input, by steps of feedback_rate times the residual of
        the re-encoded output (recon/feedback.py; no corrector needed), keeping candidates the same way.
        feedback_steps (a corrector): first that many steps of vector feedback on the base (at
        feedback_rate, keeping feedback_beam candidates: correction_beam if None), then the
        corrector's steps on the correction_beam closest it kept. correction_rate > 0 (a corrector): each
        step moves the corrector's target slot by this times the residual of its closest new candidate.
        log: a correction loop reports each step's time through it (print, or None for silence).
        temperature > 0 (one pass, num_beams=1): sample each token at this temperature instead of
        taking the most likely, drawn from a generator seeded with `seed` (the same seed, the same
        samples on one device).
        """
        vectors = torch.as_tensor(vectors)
        if vectors.dim() == 1:
            vectors = vectors[None]
        if vectors.dim() != 2 or vectors.shape[1] != self.config.vector_dim:
            raise ValueError(
                f"vectors of shape {tuple(vectors.shape)} do not fit this model: it decodes "
                f"(N, {self.config.vector_dim}) vectors ({self.config.representation} of {self.config.encoder})"
            )
        from recon.corrector import correct
        if self.base is None and correction_rate:
            raise ValueError("correction_rate moves a corrector's target slot; a plain checkpoint's vector feedback "
                             "moves its input by feedback_rate")
        if self.base is None and feedback_steps:
            raise ValueError("feedback_steps runs vector feedback on a corrector's base first; a plain checkpoint "
                             "runs its own with correction_steps")
        if self.base is None:
            if correction_steps:
                if rerank != "none" or return_all or temperature:
                    raise ValueError("vector feedback keeps its candidates by their re-encoded vectors already: "
                                     "give it correction_beam, not rerank, return_all or a temperature")
                outputs, _ = correct(self, vectors, correction_steps, correction_beam, batch_size=batch_size,
                                     num_beams=num_beams, no_repeat_ngram=no_repeat_ngram,
                                     no_repeat_match=no_repeat_match, length_penalty=length_penalty,
                                     rate=feedback_rate, seed=seed, log=log)
                return outputs[-1]
            if rerank not in ("none", "embedding"):
                raise ValueError(f"rerank must be none or embedding, not {rerank!r}")
            if rerank == "embedding" and (return_all or temperature):
                raise ValueError("rerank='embedding' chooses among beams: use rerank_beams for the beams too, and "
                                 "no temperature")
            if rerank == "embedding":
                return self.rerank_beams(vectors, num_beams=num_beams, length_penalty=length_penalty,
                                         max_new_tokens=max_new_tokens, batch_size=batch_size,
                                         no_repeat_ngram=no_repeat_ngram, no_repeat_match=no_repeat_match)[0]
            return self.decode_rows(vectors, num_beams, length_penalty, max_new_tokens, batch_size, return_all,
                                    no_repeat_ngram, no_repeat_match, temperature, seed)
        if rerank != "none":
            raise ValueError("a corrector keeps its candidates by their re-encoded vectors already: give it "
                             "correction_beam, not rerank")
        if temperature:
            raise ValueError("temperature samples one pass: give it to the base model (model.base), not a corrector")
        if return_all:
            raise ValueError("return_all is not available with correction; correction_beam keeps the closest candidates")
        if feedback_rate is not None and not feedback_steps:
            raise ValueError("feedback_rate moves a plain decoder's input (or a corrector's base's, with "
                             "feedback_steps); a corrector reads its hypothesis's vector itself")
        steps = self.correction_steps if correction_steps is None else correction_steps
        outputs, _ = correct(self, vectors, steps, correction_beam, batch_size=batch_size, num_beams=num_beams,
                             no_repeat_ngram=no_repeat_ngram, no_repeat_match=no_repeat_match,
                             length_penalty=length_penalty, rate=feedback_rate, seed=seed,
                             feedback_steps=feedback_steps, feedback_beam=feedback_beam,
                             correction_rate=correction_rate, log=log)
        return outputs[-1]

    @torch.no_grad()
    def rerank_beams(self, vectors, num_beams=8, **gen):
        """Beam search, then each sentence's beam whose re-encoded vector is closest (cosine of the
        standardised vectors) to its target: vec2text's sequence-level selection, reading nothing
        but the vector. Returns (reranked texts, the top beams as beam search ranked them)."""
        if num_beams < 2:
            raise ValueError(f"the rerank chooses among beams: give num_beams 2 or more, not {num_beams}")
        vectors = torch.as_tensor(vectors)
        best, beams = self.decode_rows(vectors, num_beams, return_all=True, **gen)
        cand = self.decoder.standardize(self.encode([text for row in beams for text, _ in row]))  # (N*K, D)
        target = self.decoder.standardize(vectors.to(cand.device)).repeat_interleave(num_beams, dim=0)
        cos = F.cosine_similarity(cand.float(), target.float(), dim=-1).view(len(beams), num_beams)
        return [row[i][0] for row, i in zip(beams, cos.argmax(-1).tolist())], best

    @torch.no_grad()
    def decode_rows(self, vectors, num_beams=1, length_penalty=1.0, max_new_tokens=None, batch_size=256,
                    return_all=False, no_repeat_ngram=0, no_repeat_match="loose", temperature=0.0, seed=0):
        """The decoder's own inputs (N, ...) -> N strings: vectors, or a corrector's rows.
        temperature > 0: sampled (greedy decoding's loop), from a generator seeded with `seed`."""
        if return_all and num_beams == 1:
            raise ValueError("return_all needs num_beams > 1")
        if temperature < 0 or (temperature > 0 and num_beams > 1):
            raise ValueError(f"temperature must be 0 (the most likely token) or above, and samples without beams; "
                             f"got temperature={temperature}, num_beams={num_beams}")
        generator = torch.Generator(self.device).manual_seed(seed) if temperature > 0 else None
        c, out, beams = self.config, [], []
        valid = self.valid_text()
        ban = dict(no_repeat_ngram=no_repeat_ngram, canon=self.piece_classes(no_repeat_match))
        with self._eval_mode():
            for start in range(0, len(vectors), batch_size):
                v = vectors[start:start + batch_size].to(self.device, torch.float32)
                if return_all:  # every beam decoded to text only when asked for
                    ids, all_ids = beam_search(self.decoder, v, c.bos_id, c.eos_id, num_beams, length_penalty,
                                               max_new_tokens, return_all=True, valid=valid, **ban)
                    beams.extend([(self.tokenizer.decode(x), s) for x, s in row] for row in all_ids)
                elif num_beams > 1:
                    ids = beam_search(self.decoder, v, c.bos_id, c.eos_id, num_beams, length_penalty, max_new_tokens,
                                      valid=valid, **ban)
                else:
                    ids = greedy(self.decoder, v, c.bos_id, c.eos_id, max_new_tokens, valid=valid,
                                 temperature=temperature, generator=generator, **ban)
                out.extend(self.tokenizer.decode(x) for x in ids)
        return (out, beams) if return_all else out

    def valid_text(self):
        """The ValidText constraint for this vocabulary on the model's device (built once)."""
        if getattr(self, "_valid", None) is None or self._valid.byte.device != self.device:
            self._valid = ValidText.for_tokenizer(self.tokenizer, self.device)
        return self._valid

    def piece_classes(self, no_repeat_match):
        """The repeat ban's classes of the vocabulary on the model's device: None for exact (token
        ids), recon.decoding.canonical_pieces for loose (built once)."""
        if no_repeat_match not in ("loose", "exact"):
            raise ValueError(f"no_repeat_match must be loose or exact, not {no_repeat_match!r}")
        if no_repeat_match == "exact":
            return None
        if getattr(self, "_classes", None) is None or self._classes.device != self.device:
            self._classes = canonical_pieces(self.tokenizer.piece_texts()).to(self.device)
        return self._classes

    def reconstruct(self, texts, **generate_kwargs):
        """list of str -> list of str: each text through its vector and back."""
        return self.generate_from_vectors(self.encode(texts), **generate_kwargs)

    def training_corpus(self):
        """The corpus this checkpoint was trained on, read and split again as train.py split it
        (`.texts("validation")`): for scripts that study a run on its own splits."""
        from recon.checkpoint import load_meta
        from recon.data import DataConfig
        if self.folder is None:
            raise CheckpointError("this model was not loaded from a checkpoint, so it has no recorded training data")
        data, _ = DataConfig.from_meta(load_meta(self.folder).get("args", {}))
        return data.build(self.encoder.count_tokens, self.config.max_length)

    # ------------------------------------------------------------------------------------------
    # training

    def teacher_inputs(self, targets):
        """The decoder's teacher-forced inputs for (B, T) targets: [BOS] t1 .. t_{T-1}."""
        bos = torch.full((targets.shape[0], 1), self.config.bos_id, dtype=targets.dtype, device=targets.device)
        return torch.cat([bos, targets[:, :-1]], dim=1)  # (B, T)

    @torch.no_grad()
    def sampled_inputs(self, vectors, targets, rate):
        """Scheduled sampling (Bengio et al. 2015), in two passes as a transformer needs (Mihaylova &
        Liu 2019): a teacher-forced pass without gradient guesses every token, and each input token
        after [BOS] is that guess instead of the reference with probability `rate` (a float or a 0-d
        tensor), so that training sees inputs like the decoder's own. Returns (B, T) input ids."""
        inputs = self.teacher_inputs(targets)
        guess = self.decoder(vectors, inputs).argmax(-1)  # (B, T): position i's guess at targets[:, i]
        swap = torch.rand(guess.shape, device=guess.device) < rate
        swap = swap[:, :-1] & (targets[:, :-1] != self.config.pad_id)  # input i+1 is targets[:, i]
        inputs[:, 1:] = torch.where(swap, guess[:, :-1], inputs[:, 1:])
        return inputs

    def loss(self, vectors, targets, reduction="mean", label_smoothing=0.0, inputs=None):
        """Teacher-forced cross-entropy. targets: (B, T) token ids ending in [EOS], padded with
        pad_id. Returns the mean (or with reduction="sum" the sum) of the loss over real tokens;
        label_smoothing > 0 (training only) spreads that share of each target over the vocabulary.
        inputs: the decoder's (B, T) inputs when not the teacher-forced ones (scheduled sampling)."""
        inputs = self.teacher_inputs(targets) if inputs is None else inputs
        logits = self.decoder(vectors, inputs)  # (B, T, V)
        labels = targets.masked_fill(targets == self.config.pad_id, -100)
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                           reduction=reduction, label_smoothing=label_smoothing)

    def training_loss(self, vectors, targets, label_smoothing=0.0, sample_rate=None):
        """The summed loss a training step minimises: the token loss (smoothed when asked), plus the
        decoder's auxiliary bag-of-words loss when it has one (kept out of `loss`, so validation
        losses compare). sample_rate: scheduled sampling's share of inputs from the decoder's own
        guesses (None: teacher forcing alone)."""
        inputs = self.sampled_inputs(vectors, targets, sample_rate) if sample_rate is not None else None
        loss = self.loss(vectors, targets, reduction="sum", label_smoothing=label_smoothing, inputs=inputs)
        if self.decoder.bow_weight > 0:
            loss = loss + self.decoder.bow_weight * self.decoder.bow_loss(vectors, targets, self.config.pad_id)
        return loss

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
        if config.base_model:  # a corrector: its base model first, whose encoder it shares
            if not os.path.isdir(config.base_model):
                raise CheckpointError(f"{folder} corrects the model in {config.base_model}, which is not there; "
                                      "put the base run back at that path")
            base = cls.from_pretrained(config.base_model, encoder=encoder, representation=representation, device=device)
            self = cls(config, base.encoder, base.tokenizer)
            self.attach_base(base)
            self.set_precisions(**recorded_precisions(folder))  # the base's encoder and decoder too, as this run ran them
            self.folder = folder
            self.load_weights(folder)
            if device is not None:
                self.to(device)
            missing = [c for c in config.companions if not os.path.isdir(c)]
            if missing:
                raise CheckpointError(f"{folder} pools the feedback of the decoders in {missing}, which are not there; "
                                      "put them back at those paths")
            self.add_companions(config.companions, device)
            return self.eval()
        if representation is not None and representation != config.representation:
            raise CheckpointError(
                f"{folder} decodes {config.representation!r} vectors, not {representation!r}; "
                "use a checkpoint trained with that --representation"
            )
        enc = config.encoder_spec.build(name=encoder)
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
        self.set_precisions(**recorded_precisions(folder))
        self.folder = folder
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
