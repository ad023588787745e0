"""Everything a training run needs before its first step, built in order: the run folder (claimed,
checked), the checkpoint it resumes, the encoder, the data, the decoder vocabulary, the model, the
targets and, for a frozen encoder, every vector once (or from the cache).

Under torchrun every process prepares the same run; rank 0 alone claims and writes the run
folder, trains the SentencePiece vocabulary (the others receive it) and writes the vector cache.
"""

import os
import random
import time
from dataclasses import dataclass
from typing import Optional

import torch

from recon import distributed as dist
from recon.cache import cached_encode, cached_sentencepiece, encoder_cache
from recon.checkpoint import (RunLock, clear_run_dir, holds_a_run, list_checkpoints, load_meta, resolve_checkpoint,
                              resumable)
from recon.data import Corpus, DataConfig, describe
from recon.config import EXTENDABLE
from recon.corrector import (calibrate_noise, hypothesis_rows, mixed_rows, round_outputs, round_rows, train_companions,
                             warm_start)
from recon.errors import ConfigError, ReconError, check
from recon.metrics import corpus_scores
from recon.model import ReconModel
from recon.progress import progress
from recon.spec import part, with_unrecorded
from recon.tokenizer import SentencePieceTokenizer, TokenizerSpec, load_decoder_tokenizer


@dataclass
class Prepared:
    device: torch.device
    corpus: Corpus
    model: ReconModel
    targets: dict  # split -> list of decoder token-id lists, each ending in [EOS]
    vectors: dict  # split -> (N, Dv) vectors of a frozen encoder, or None where the encoder runs in the step
    train_ids: Optional[list]  # encoder input ids of the training texts, when the encoder runs in the step
    resume_from: Optional[str]  # the checkpoint this run continues
    resume_meta: dict
    pool_vectors: Optional[torch.Tensor] = None  # a corrector's: every training text's vector (the retrieval pool)


def on_rank0(fn):
    """fn() on rank 0 only, its result there (None elsewhere); a ReconError it raises is raised on
    every rank (no rank left waiting)."""
    result = error = None
    if dist.is_main():
        try:
            result = fn()
        except ReconError as e:
            error = e
    error = dist.broadcast_object(error)
    if error is not None:
        raise error
    return result


def claim_run_folder(cfg):
    """Lock the run folder for this run (on rank 0) and refuse to write over a different run
    unless asked to. Returns the lock."""
    lock = RunLock(cfg.output_dir)
    try:
        if not cfg.resume and holds_a_run(cfg.output_dir):
            if not cfg.overwrite:
                raise ConfigError(f"{cfg.output_dir} already holds a run; continue it with --resume, choose another "
                                  "--output-dir or --run-name, or pass --overwrite to replace it")
            clear_run_dir(cfg.output_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def find_resume(cfg):
    """The checkpoint folder --resume names (auto: the newest in --output-dir) and its meta."""
    if cfg.resume == "auto":
        steps = list_checkpoints(cfg.output_dir)
        if not steps:
            raise ConfigError(f"--resume: {cfg.output_dir} holds no checkpoint to resume; start without --resume")
        folder = os.path.join(cfg.output_dir, f"checkpoint-{steps[-1]}")
    else:
        folder = resolve_checkpoint(cfg.resume)
    if not resumable(folder):
        raise ConfigError(f"--resume: {folder} has no trainer state; it can be evaluated or used, not resumed")
    meta = load_meta(folder)
    changed = cfg.changed_from(meta["args"])
    if cfg.extend:
        changed = [k for k in changed if k not in EXTENDABLE]
    if changed:
        schedule_only = all(k in EXTENDABLE for k in changed)
        raise ConfigError(
            f"--resume: {folder} was trained with other settings: "
            + ", ".join(f"{k} {with_unrecorded(meta['args']).get(k)!r} -> {getattr(cfg, k)!r}" for k in changed)
            + ("; to train past the end of its schedule add --extend" if schedule_only else
               "; resume with the original flags, or start a new run")
        )
    return folder, meta


def load_data(cfg, encoder, log):
    corpus = part(DataConfig, cfg).build(encoder.count_tokens, cfg.max_length)
    log(describe(corpus.stats))
    sizes = {s: len(corpus.texts(s)) for s in ("train", "validation", "test")}
    final = not cfg.no_eval and cfg.eval_split
    wanted = {"train": True, "validation": cfg.validation_fraction > 0 or final == "validation",
              "test": cfg.test_fraction > 0 or final == "test"}
    for split in ("train", "validation", "test"):
        if wanted[split] and not sizes[split]:
            raise ConfigError(
                f"the {split} split is empty ({sizes}): use more data, or a larger --{split}-fraction"
                + (" (or --no-eval to skip the final evaluation)" if split == "test" else "")
            )
    return corpus


def decoder_vocabulary(cfg, train_texts, encoder, resume_from, log=print):
    if resume_from:
        return load_decoder_tokenizer(cfg.decoder_tokenizer, resume_from)
    spec = part(TokenizerSpec, cfg)
    if cfg.decoder_tokenizer == "sentencepiece":  # trained once, on rank 0, and handed to the others
        proto = None
        if dist.is_main():
            proto, hit = cached_sentencepiece(train_texts, cfg.vocab_size, cfg.cache_dir, SentencePieceTokenizer.train)
            if hit:
                log(f"decoder vocabulary: read from the cache in {cfg.cache_dir} (trained before on these texts)")
        return SentencePieceTokenizer(dist.broadcast_object(proto))
    return spec.build(train_texts, encoder.tokenizer)


@torch.no_grad()
def encoder_rows(tokenizer, encoder):
    """(V, De): for each decoder token, the mean of the encoder's input embeddings of the word pieces
    its text tokenises to (the encoder's own vocabulary: its rows); NaN where it has no text."""
    emb = encoder.model.get_input_embeddings().weight.detach().float().cpu()
    texts = tokenizer.piece_texts()
    if tokenizer.kind == "encoder":
        ids = [[i] if t is not None else [] for i, t in enumerate(texts)]
    else:
        ids = encoder.tokenizer([t or "" for t in texts], add_special_tokens=False)["input_ids"]
    rows = torch.full((len(texts), emb.shape[1]), float("nan"))
    for i, (t, x) in enumerate(zip(texts, ids)):
        if t is not None and x:
            rows[i] = emb[x].mean(0)
    return rows


def decoder_targets(tokenizer, texts, max_len):
    """Token ids ending in [EOS], cut to max_len tokens; and how many were cut."""
    ids = tokenizer.encode(texts) if texts else []  # an empty split (a fraction of 0) has no targets
    return [x[:max_len] + [tokenizer.eos_id] for x in ids], sum(len(x) > max_len for x in ids)


def frozen_vectors(cfg, model, texts, log):
    """Every vector once (or from the cache); the decoder standardises with the training split's."""
    t0, encoder = time.time(), model.encoder
    cache_dir, encoder_id = encoder_cache(cfg.encoder_spec, encoder, cfg.cache_dir)
    vectors, hit = {}, True
    with progress(total=sum(map(len, texts.values())), desc="encoding", leave=False, disable=not dist.is_main()) as bar:
        for split, xs in texts.items():
            if xs:
                vectors[split], split_hit = cached_encode(encoder, xs, cache_dir, encoder_id, cfg.eval_batch_size, bar)
                hit = hit and split_hit
    how = f"read from the cache in {cache_dir}" if hit else "encoded"
    log(f"{sum(map(len, texts.values()))} vectors {how} in {time.time() - t0:.1f}s")
    return vectors


def hypotheses_for(cfg, base, model, texts, vectors, stats, log, previous=None):
    """A corrector run's rows of the training and validation splits: the base's hypotheses of the
    validation texts as evaluation decodes them, of the training texts with --hypothesis-noise; a
    later round's (previous: the corrector it starts from) also that corrector's outputs."""
    rows, val_hyps = {}, None
    if texts["validation"]:
        rows["validation"], val_hyps = hypothesis_rows(base, model.decoder, vectors["validation"], texts["validation"],
                                                       cfg.cache_dir, cfg.hypothesis_repeat_ngram, log, cfg.eval_batch_size)
    noise = cfg.hypothesis_noise
    if noise == "auto":
        check(val_hyps is not None, "--hypothesis-noise auto matches the validation split's hypotheses, and it is "
                                    "empty: give --hypothesis-noise a number, or a --validation-fraction above 0")
        noise = calibrate_noise(base, vectors["train"], texts["train"], corpus_scores(val_hyps, texts["validation"])["token_f1"],
                                cfg.hypothesis_repeat_ngram, log, cfg.eval_batch_size)
        log(f"--hypothesis-noise auto: {noise:g}")
    stats["hypothesis_noise"] = float(noise)  # what auto chose, in the run's data.json
    stats["hypothesis_texts"] = len(texts["train"])
    rows["train"], _ = hypothesis_rows(base, model.decoder, vectors["train"], texts["train"], cfg.cache_dir,
                                       cfg.hypothesis_repeat_ngram, log, cfg.eval_batch_size, noise=float(noise))
    if cfg.hypothesis_mix:
        rows["train"] = mixed_rows(base, model.decoder, rows["train"], texts["train"], cfg.hypothesis_mix,
                                   cfg.hypothesis_mix_rate, log, cfg.eval_batch_size, seed=cfg.seed)
    if previous is not None:  # a later round: its previous corrector's outputs too, one row per text more
        rows["train"] = torch.cat([rows["train"], later_round_rows(cfg, previous, model, texts, rows, stats, log)])
    return rows["train"], rows.get("validation")


def later_round_rows(cfg, previous, model, texts, rows, stats, log):
    """--previous-round: that corrector's one-step outputs from the base's hypotheses of the training
    texts, decoded from the target vectors plus noise so that they are as right as its outputs of
    the validation texts (--hypothesis-noise auto; or the number given), re-encoded."""
    noise = cfg.hypothesis_noise
    if noise == "auto":  # its one step from the validation split's hypotheses is what the noise matches
        val_f1 = corpus_scores(round_outputs(previous, rows["validation"], cfg.hypothesis_repeat_ngram,
                                             cfg.eval_batch_size), texts["validation"])["token_f1"]
        noise = calibrate_noise(previous.base, rows["train"], texts["train"], val_f1, cfg.hypothesis_repeat_ngram, log,
                                cfg.eval_batch_size, decode=lambda r, noise: round_outputs(
                                    previous, r, cfg.hypothesis_repeat_ngram, cfg.eval_batch_size, noise))
        log(f"--hypothesis-noise auto for the previous round's outputs: {noise:g}")
    stats["previous_round_noise"] = float(noise)  # in data.json, as hypothesis_noise
    new, _ = round_rows(previous, model.decoder, rows["train"], texts["train"], cfg.cache_dir,
                        cfg.hypothesis_repeat_ngram, log, cfg.eval_batch_size, noise=float(noise))
    log(f"training rows: {len(new)} hypotheses of the base and {len(new)} outputs of the previous round")
    return new


def prepare(cfg, device, log=print):
    """Build the run `cfg` describes, in order (the caller holds the run folder's lock). A corrector
    run (--base-model, its settings already the base's: corrector.adopt_base) shares the base's
    encoder and vocabulary, starts from its decoder, and reads rows of its hypotheses."""
    companions = train_companions(cfg, log)  # a corrector run's --companions, first
    resume_from, resume_meta = find_resume(cfg) if cfg.resume else (None, {})
    previous = ReconModel.from_pretrained(cfg.previous_round, device=device) if cfg.previous_round else None
    base = previous.base if previous else ReconModel.from_pretrained(cfg.base_model, device=device) if cfg.base_model else None
    encoder = base.encoder if base else cfg.encoder_spec.build()
    encoder.precision = cfg.encoder_precision
    corpus = load_data(cfg, encoder, log)
    if resume_from and resume_meta["data"]["corpus_hash"] != corpus.stats["corpus_hash"]:
        raise ConfigError(f"--resume: the data is not what {resume_from} was trained on (corpus hash differs)")
    texts = {s: corpus.texts(s) for s in ("train", "validation")}
    tokenizer = base.tokenizer if base else decoder_vocabulary(cfg, texts["train"], encoder, resume_from, log)
    model = ReconModel.from_encoder(encoder, tokenizer, cfg.encoder_spec, cfg.decoder_spec,
                                    base_model=cfg.base_model or "").to(device)
    model.config.companions = companions  # recorded in the corrector's config.json, loaded with it
    if base:
        model.attach_base(base)
        warm_start(model.decoder, (previous or base).decoder)  # and with it the base's vector statistics
    elif cfg.embedding_init == "encoder" and not resume_from:
        log(model.decoder.init_from_encoder(encoder, encoder_rows(tokenizer, encoder)))
    model.set_precisions(generation=cfg.generation_precision)  # and the base's, which writes the hypotheses
    world = dist.world_size()
    log(f"decoder: {model.decoder_parameters() / 1e6:.2f}M parameters, vocabulary {tokenizer.vocab_size} "
        f"({tokenizer.kind}); device {device}" + (f", {world} processes (DDP)" if world > 1 else ""))
    if base:  # a corrector learns from the hypotheses of the first N training texts (the copies last, if at all)
        texts["train"] = corpus.texts("train", copies=cfg.hypothesis_copies)[:cfg.hypotheses or None]
    targets = {}
    for split, xs in texts.items():
        targets[split], cut = decoder_targets(tokenizer, xs, cfg.max_target_len)
        if split == "train":
            corpus.stats["train_targets_truncated"] = cut
            if cut:
                log(f"{cut} training texts are longer than --max-target-len {cfg.max_target_len} decoder tokens: truncated")
    vectors, train_ids, pool = {"train": None, "validation": None}, None, None
    if not model.trains_encoder and cfg.cls_init != "random-per-forward":  # frozen and deterministic
        if base:  # every training text's vector (the retrieval control's pool); the first N are the corrector's
            vectors.update(frozen_vectors(cfg, model, {**texts, "train": corpus.texts("train")}, log))
            pool = vectors["train"]
            vectors["train"] = pool[:len(texts["train"])]
            # the corrector reads rows: target vector, the base's hypothesis and its vector
            vectors["train"], vectors["validation"] = hypotheses_for(cfg, base, model, texts, vectors, corpus.stats, log,
                                                                     previous)
            if previous:  # each training text is the target of two rows: the base's hypothesis, the round's output
                targets["train"] = targets["train"] * 2
        else:
            vectors.update(frozen_vectors(cfg, model, texts, log))
            model.decoder.set_vector_stats(vectors["train"])
        vectors["train"] = vectors["train"].to(device)  # indexed on the device in every step
    else:  # the encoder runs in every step; standardise with the statistics it starts from
        model.decoder.set_vector_stats(encoder.encode(texts["train"][:4096], cfg.eval_batch_size))
        train_ids = encoder.token_ids(texts["train"])  # tokenised once, not in every step
    return Prepared(device, corpus, model, targets, vectors, train_ids, resume_from, resume_meta, pool)


def set_seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)
