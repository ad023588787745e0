"""The training loop: teacher-forced cross-entropy on (vector, sentence) pairs.

With a frozen encoder every vector is computed once before training, so a step costs only the
decoder. A fine-tuned or scratch encoder runs inside the step (fine-tuned at its own learning
rate). Batches are bucketed by length. Checkpoints hold everything --resume needs;
SIGINT/SIGTERM save one before exiting. Under torchrun the step runs data-parallel (DDP): each
process takes its share of the global batch, rank 0 alone writes, evaluation is sharded.
"""

import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from recon import distributed as dist
from recon.cache import cached_encode
from recon.checkpoint import TRAINER_STATE_FILE, git_commit, list_checkpoints, load_meta, save_checkpoint
from recon.config import ConfigError
from recon.data import build_corpus, describe
from recon.encoder import SCRATCH, build_encoder
from recon.evaluation import evaluate, write_outputs
from recon.errors import ReconError
from recon.model import ReconModel, resolve_checkpoint
from recon.report import headline_table
from recon.speed import decoder_matmul_params, flops_per_token, padding_fraction, peak_flops
from recon.tokenizer import EncoderVocabTokenizer, SentencePieceTokenizer, load_decoder_tokenizer


def set_seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def pad_batch(seqs, pad_id, device, multiple=1):
    """list of id lists -> (B, T) tensor, right-padded (T rounded up to `multiple`: fewer shapes
    for torch.compile). On CUDA the host copy is pinned and the transfer does not block."""
    T = -(-max(len(s) for s in seqs) // multiple) * multiple
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return to_device(out, device)


def to_device(t, device):
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def lr_lambda(warmup, total, min_ratio):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def make_optimizer(model, cfg, device):
    decay, no_decay = [], []
    for name, p in model.decoder.named_parameters():
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr}]
    if model.trains_encoder:  # a pretrained encoder at its own rate; one from scratch at the decoder's
        lr = cfg.lr if model.config.encoder == SCRATCH else cfg.encoder_lr
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        groups.append({"params": params, "weight_decay": 0.01, "lr": lr})
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), fused=device.type == "cuda")


def prepare_run_dir(cfg):
    """Refuse to write over a different run unless asked to."""
    taken = list_checkpoints(cfg.output_dir) or os.path.exists(os.path.join(cfg.output_dir, "metrics.jsonl"))
    if taken and not cfg.overwrite:
        raise ConfigError(
            f"{cfg.output_dir} already holds a run; continue it with --resume, choose another "
            "--output-dir or --run-name, or pass --overwrite to replace it"
        )
    if taken:
        shutil.rmtree(cfg.output_dir)
    os.makedirs(cfg.output_dir, exist_ok=True)


class Batches:
    """The global batch of indices of each step: a pure function of (seed, step), so a resumed
    run sees the same batches.

    Each epoch is a fresh permutation (the ragged last batch dropped). With pool > 0 the
    permutation is cut into pools of `pool` batches, each pool is sorted by length and cut into
    batches, and the epoch's batches are shuffled: a batch holds similar lengths (little padding)
    while no order by length runs through the epoch.
    """

    def __init__(self, lengths, batch_size, seed, pool=0):
        self.lengths = lengths
        self.n, self.batch_size, self.seed, self.pool = len(lengths), min(batch_size, len(lengths)), seed, pool
        self.per_epoch = self.n // self.batch_size
        self._epoch, self._batches = None, None

    def epoch(self, epoch):
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        bs = self.batch_size
        perm = torch.randperm(self.n, generator=g).tolist()[:self.per_epoch * bs]
        if not self.pool:
            return [perm[i:i + bs] for i in range(0, len(perm), bs)]
        size = self.pool * bs
        pools = [sorted(perm[s:s + size], key=self.lengths.__getitem__) for s in range(0, len(perm), size)]
        batches = [p[i:i + bs] for p in pools for i in range(0, len(p), bs)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __call__(self, step):
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch(epoch)
        return self._batches[i]

    def padding(self, epoch=0):
        """Share of padded positions over one epoch's batches."""
        return padding_fraction([[self.lengths[i] for i in b] for b in self.epoch(epoch)])


class TrainStep(torch.nn.Module):
    """The summed token loss of one batch as a module's forward, so that DDP and torch.compile
    can wrap it; the encoder runs here when it is trained (vectors None)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, targets, vectors=None, input_ids=None, attention_mask=None):
        if vectors is None:
            vectors = self.model.encoder(input_ids, attention_mask)  # (B, Dv)
        return self.model.loss(vectors, targets, reduction="sum")


@torch.no_grad()
def validation_loss(model, vectors, targets, texts, cfg, device):
    """Mean token loss over the validation split (each process its shard under torchrun)."""
    model.eval()
    r, w = dist.rank(), dist.world_size()
    total, tokens = 0.0, 0
    for s in range(r * cfg.eval_batch_size, len(targets), w * cfg.eval_batch_size):
        y = pad_batch(targets[s:s + cfg.eval_batch_size], model.config.pad_id, device)
        v = vectors[s:s + cfg.eval_batch_size] if vectors is not None else model.encode(texts[s:s + cfg.eval_batch_size])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            total += float(model.loss(v, y, reduction="sum"))
        tokens += int((y != model.config.pad_id).sum())
    model.train()
    total, tokens = dist.all_sum([total, tokens], device)
    return total / max(tokens, 1)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was saved first."""

    def __init__(self, signum, checkpoint):
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {checkpoint}; "
                         "continue with the same command and --resume")
        self.signum, self.checkpoint = signum, checkpoint


class TrainingDiverged(ReconError):
    pass


# arguments that may differ when resuming: they change bookkeeping, not the numbers
RESUME_MAY_CHANGE = {"resume", "overwrite", "output_dir", "run_name", "device", "eval_steps", "save_steps",
                     "save_total_limit", "no_eval", "num_beams", "eval_batch_size", "cache_dir", "rerank",
                     "compile", "peak_tflops"}


def resume_checkpoint(cfg):
    """The checkpoint folder --resume names (auto: the newest in --output-dir) and its meta."""
    if cfg.resume == "auto":
        steps = list_checkpoints(cfg.output_dir)
        if not steps:
            raise ConfigError(f"--resume: {cfg.output_dir} holds no checkpoint to resume; start without --resume")
        folder = os.path.join(cfg.output_dir, f"checkpoint-{steps[-1]}")
    else:
        folder = resolve_checkpoint(cfg.resume)
    meta = load_meta(folder)
    if not os.path.isfile(os.path.join(folder, TRAINER_STATE_FILE)) or "args" not in meta:
        raise ConfigError(f"--resume: {folder} has no trainer state; it can be evaluated or used, not resumed")
    old, new = meta["args"], asdict(cfg)
    changed = sorted(k for k in new if k not in RESUME_MAY_CHANGE and old.get(k) != new[k])
    if changed:
        raise ConfigError(
            f"--resume: {folder} was trained with other settings: "
            + ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed)
            + "; resume with the original flags, or start a new run"
        )
    return folder, meta


def rng_state():
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_log(path, step):
    """Drop log lines written after `step` (by a run that died after its last checkpoint)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(keep)


class StopSignals:
    """Turns SIGINT and SIGTERM into a flag that the loop checks after each step."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _on_rank0(fn):
    """Run fn on rank 0 only; a ReconError it raises is raised on every rank (no rank left waiting)."""
    error = None
    if dist.is_main():
        try:
            fn()
        except ReconError as e:
            error = e
    error = dist.broadcast_object(error)
    if error is not None:
        raise error


def train(cfg, log=print):
    """Train a model as `cfg` says; returns (model, run folder, test metrics or None).

    Under torchrun (see recon/distributed.py) every process calls this; rank 0 alone logs and
    writes files, and every process returns the same model and metrics.
    """
    t_start = time.time()
    device = dist.setup(cfg.device)
    main, world = dist.is_main(), dist.world_size()
    if not main:
        log = lambda *a, **k: None  # noqa: E731
    if cfg.batch_size < world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the {world} processes; each needs a share")
    set_seed(cfg.seed)
    resume_from, resume_meta = resume_checkpoint(cfg) if cfg.resume else (None, None)
    if resume_from is None:
        _on_rank0(lambda: prepare_run_dir(cfg))

    scratch_size = (cfg.scratch_d_model, cfg.scratch_layers, cfg.scratch_heads)
    encoder = build_encoder(cfg.encoder, cfg.representation, cfg.layer, cfg.max_length, cfg.cls_init,
                            cfg.encoder_init, cfg.scratch_tokenizer, scratch_size)
    corpus = build_corpus(cfg.data, encoder.count_tokens, **cfg.corpus_kwargs())
    log(describe(corpus.stats))
    if resume_from and resume_meta["data"]["corpus_hash"] != corpus.stats["corpus_hash"]:
        raise ConfigError(f"--resume: the data is not what {resume_from} was trained on (corpus hash differs)")
    train_texts, val_texts = corpus.texts("train"), corpus.texts("validation")
    sizes = {s: len(corpus.texts(s)) for s in ("train", "validation", "test")}
    wanted = {"train": True, "validation": cfg.validation_fraction > 0, "test": cfg.test_fraction > 0 or not cfg.no_eval}
    for split in ("train", "validation", "test"):
        if wanted[split] and not sizes[split]:
            raise ConfigError(
                f"the {split} split is empty ({sizes}): use more data, or a larger --{split}-fraction"
                + (" (or --no-eval to skip the final evaluation)" if split == "test" else "")
            )

    if resume_from:
        dec_tok = load_decoder_tokenizer(cfg.decoder_tokenizer, resume_from)
    elif cfg.decoder_tokenizer == "sentencepiece":  # trained once, on rank 0, and handed to the others
        dec_tok = SentencePieceTokenizer(dist.broadcast_object(
            SentencePieceTokenizer.train(train_texts, cfg.vocab_size).proto if main else None))
    else:
        dec_tok = EncoderVocabTokenizer(encoder.tokenizer)
    model = ReconModel.from_encoder(
        encoder, dec_tok, cfg.encoder, d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
        dropout=cfg.dropout, num_prefix=cfg.num_prefix, max_target_len=cfg.max_target_len,
        finetune_encoder=cfg.finetune_encoder, finetune_layers=cfg.finetune_layers, encoder_init=cfg.encoder_init,
        scratch_tokenizer=cfg.scratch_tokenizer if cfg.encoder == SCRATCH else "", scratch_size=list(scratch_size),
    ).to(device)
    n_params = sum(p.numel() for p in model.decoder.parameters())
    log(f"decoder: {n_params / 1e6:.2f}M parameters, vocabulary {dec_tok.vocab_size} ({dec_tok.kind}); "
        f"device {device}" + (f", {world} processes (DDP)" if world > 1 else ""))

    def targets_of(texts):
        ids = dec_tok.encode(texts)
        cut = sum(len(x) > cfg.max_target_len for x in ids)
        return [x[:cfg.max_target_len] + [dec_tok.eos_id] for x in ids], cut

    train_y, cut = targets_of(train_texts)
    val_y, _ = targets_of(val_texts)
    corpus.stats["train_targets_truncated"] = cut
    if cut:
        log(f"{cut} training texts are longer than --max-target-len {cfg.max_target_len} decoder tokens: truncated")

    train_v = val_v = train_ids = None
    # frozen and deterministic: each vector once (or from the cache), then only the decoder trains
    if not model.trains_encoder and cfg.cls_init != "random-per-forward":
        t0 = time.time()
        # random weights depend on the seed; pretrained ones are named by the fingerprint
        cache_dir = cfg.cache_dir if cfg.encoder_init == "pretrained" else ""
        encoder_id = {"encoder": cfg.encoder, "fingerprint": encoder.base_fingerprint, "representation": cfg.representation,
                      "layer": cfg.layer, "max_length": cfg.max_length, "cls_init": cfg.cls_init}
        with tqdm(total=len(train_texts) + len(val_texts), desc="encoding", leave=False, disable=not main) as bar:
            train_v, hit = cached_encode(encoder, train_texts, cache_dir, encoder_id, cfg.eval_batch_size, bar)
            if val_texts:
                val_v, _ = cached_encode(encoder, val_texts, cache_dir, encoder_id, cfg.eval_batch_size, bar)
        how = f"read from the cache in {cache_dir}" if hit else "encoded"
        log(f"{len(train_texts) + len(val_texts)} vectors {how} in {time.time() - t0:.1f}s")
        model.decoder.set_vector_stats(train_v)
        train_v = train_v.to(device)  # indexed on the device in every step
    else:  # the encoder runs in every step; standardise with the statistics it starts from
        model.decoder.set_vector_stats(encoder.encode(train_texts[:4096], cfg.eval_batch_size))
        train_ids = encoder.token_ids(train_texts)  # tokenised once, not in every step

    train_len = [len(y) for y in train_y]
    batches = Batches(train_len, cfg.batch_size, cfg.seed, cfg.bucket_pool)
    max_steps = cfg.max_steps or max(1, int(cfg.epochs * batches.per_epoch))
    padding = {"padding_fraction": batches.padding(), "padding_fraction_unbucketed": Batches(train_len, cfg.batch_size, cfg.seed).padding()}
    log(f"padding: {100 * padding['padding_fraction']:.1f}% of decoder positions"
        + (f" (bucketed in pools of {cfg.bucket_pool} batches; {100 * padding['padding_fraction_unbucketed']:.1f}% unbucketed)"
           if cfg.bucket_pool else ""))
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, max_steps, cfg.min_lr_ratio))
    meta = {"args": asdict(cfg), "git_commit": git_commit(), "data": corpus.stats, "decoder_parameters": n_params,
            "world_size": world, **padding}
    log_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    start, tokens_seen, last_val = 0, 0, None
    if world > 1:  # the same weights everywhere (DDP checks), but each process its own dropout
        torch.manual_seed(cfg.seed + 1000 * dist.rank())
    if resume_from:
        model.load_weights(resume_from)
        state = torch.load(os.path.join(resume_from, TRAINER_STATE_FILE), map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == world:
            set_rng_state(per_rank[dist.rank()])
        else:
            log(f"note: {resume_from} was written by {len(per_rank)} processes, this run has {world}: "
                "dropout draws will differ from the uninterrupted run")
        start, tokens_seen, last_val = state["step"], state["tokens_seen"], resume_meta.get("val_loss")
        if main:
            truncate_log(log_path, start)
        log(f"resumed from {resume_from} at step {start}")
    if main:
        with open(os.path.join(cfg.output_dir, "data.json"), "w") as f:
            json.dump(corpus.stats, f, indent=2)
    samples = (val_texts or train_texts)[:3]

    def save(step):
        """Every process takes part (RNG states are gathered); rank 0 writes."""
        states = dist.gather_objects(rng_state())
        meta.update(step=step, val_loss=last_val, tokens_seen=tokens_seen, train_seconds=time.time() - t_start)
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                 "tokens_seen": tokens_seen, "rng": states[0], **({"rng_per_rank": states} if world > 1 else {})}
        folder = os.path.join(cfg.output_dir, f"checkpoint-{step}")
        if main:
            folder = save_checkpoint(cfg.output_dir, step, model, meta, state, cfg.save_total_limit)
        dist.barrier()
        return folder

    step_fn = TrainStep(model)
    if world > 1:
        # a trained encoder may leave parameters without a gradient (layers above --layer, the pooler)
        step_fn = DDP(step_fn, device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=False, find_unused_parameters=model.trains_encoder)
    if cfg.compile:
        step_fn = torch.compile(step_fn)
    peak = peak_flops(device, cfg.peak_tflops)
    matmul_params = decoder_matmul_params(model.decoder)
    pad_multiple = 8 if cfg.compile else 1
    model.train()
    bar = tqdm(range(start, max_steps), desc="training", dynamic_ncols=True, initial=start, total=max_steps,
               disable=not main)
    loss_sum = torch.zeros((), device=device)
    window = {"steps": 0, "tokens": 0, "positions": 0, "flops": 0.0, "start": time.time()}
    with StopSignals() as stop:
        for step in bar:
            idx = batches(step)  # the global batch; this process takes every world-th row
            n_tok = sum(train_len[i] for i in idx)  # known on every process: no collective needed
            mine = idx[dist.rank()::world]
            y = pad_batch([train_y[i] for i in mine], dec_tok.pad_id, device, pad_multiple)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                if train_v is not None:
                    loss = step_fn(y, vectors=train_v[to_device(torch.tensor(mine), device)])
                else:
                    input_ids, mask = encoder.collate([train_ids[i] for i in mine], device)
                    loss = step_fn(y, input_ids=input_ids, attention_mask=mask)
            # this process's share of the global batch's mean token loss; DDP averages gradients
            # over processes, so scale back up by their number
            loss = loss / n_tok
            (loss * world).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            tokens_seen += n_tok
            longest = max(train_len[i] for i in idx)
            window["steps"] += 1
            window["tokens"] += n_tok
            window["positions"] += len(idx) * longest
            window["flops"] += n_tok * flops_per_token(matmul_params, cfg.n_layer, cfg.d_model, cfg.num_prefix + longest)

            done = step + 1
            at_save = bool(cfg.save_steps and done % cfg.save_steps == 0) or done == max_steps
            # read the loss back every 10 steps and before every save, not every step; under torchrun
            # the processes agree on a signal there too (one alone must not stop)
            check = done % 10 == 0 or at_save or (world == 1 and stop.signum)
            if not check:
                continue
            train_loss, stopping = dist.all_sum([float(loss_sum), float(bool(stop.signum))], device)
            train_loss /= window["steps"]
            saving = at_save or stopping
            if not math.isfinite(train_loss):
                kept = list_checkpoints(cfg.output_dir)
                raise TrainingDiverged(
                    f"the training loss became {train_loss} between steps {done - window['steps'] + 1} and {done}; "
                    + (f"the last good checkpoint, {cfg.output_dir}/checkpoint-{kept[-1]}, is intact; "
                       if kept else "no checkpoint was written; ")
                    + "lower --lr or raise --warmup-steps and start again"
                )
            seconds = max(time.time() - window["start"], 1e-9)
            tps = window["tokens"] / seconds
            record = {"step": done, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_second": tps, "padding": 1 - window["tokens"] / window["positions"],
                      "tokens_seen": tokens_seen, "elapsed": time.time() - t_start}
            if peak:
                record["mfu"] = window["flops"] / seconds / (peak * world)
            loss_sum.zero_()
            window = {"steps": 0, "tokens": 0, "positions": 0, "flops": 0.0, "start": time.time()}
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            **({"mfu": f"{100 * record['mfu']:.1f}%"} if peak else {}))
            if done % cfg.eval_steps == 0 or done == max_steps:
                msg = f"step {done}: train loss {train_loss:.3f}"
                if val_texts:
                    last_val = validation_loss(model, val_v, val_y, val_texts, cfg, device)
                    record["val_loss"] = last_val
                    msg += f", validation loss {last_val:.3f}"
                if main:
                    bar.write(msg)
                    for ref, out in zip(samples, model.reconstruct(samples)):
                        bar.write(f"  original: {ref}\n  decoded:  {out}")
            if main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if saving:
                folder = save(done)
            if stopping:
                bar.close()
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, folder)
    bar.close()
    log(f"trained {max_steps} steps in {time.time() - t_start:.0f}s; checkpoint in {cfg.output_dir}")

    metrics = None
    if not cfg.no_eval:
        test = corpus.texts("test")
        metrics, rows = evaluate(model, test, [corpus.lengths[t] for t in test], num_beams=cfg.num_beams,
                                 batch_size=cfg.eval_batch_size, seed=cfg.seed, rerank=cfg.rerank,
                                 pool_texts=train_texts, pool_vectors=train_v, log=log)
        metrics.update(split="test", checkpoint=cfg.output_dir, step=max_steps)
        out = os.path.join(cfg.output_dir, "eval-test")
        if main:
            write_outputs(out, metrics, rows, title=f"recon: {cfg.output_dir}, test split")
        log(f"\ntest split ({len(test)} sentences, report in {out}/report.md):\n{headline_table(metrics)}")
    log(f"total wall time {time.time() - t_start:.0f}s")
    dist.barrier()
    return model, cfg.output_dir, metrics
