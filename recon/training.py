"""The training loop: teacher-forced cross-entropy on (vector, sentence) pairs.

With a frozen encoder every vector is computed once before training, so a step costs only the
decoder. With --finetune-encoder the encoder runs inside the step with its own learning rate.
"""

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict

import torch
from tqdm import tqdm

from recon.checkpoint import git_commit, list_checkpoints, save_checkpoint
from recon.config import ConfigError
from recon.data import build_corpus, describe
from recon.encoder import Encoder, load_encoder
from recon.evaluation import evaluate, write_outputs
from recon.model import ReconModel
from recon.report import headline_table
from recon.tokenizer import EncoderVocabTokenizer, SentencePieceTokenizer


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def pad_batch(seqs, pad_id, device):
    """list of id lists -> (B, T) tensor, right-padded."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device, non_blocking=True)


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
    if cfg.finetune_encoder:
        groups.append({"params": list(model.encoder.parameters()), "weight_decay": 0.01, "lr": cfg.encoder_lr})
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), fused=device.type == "cuda")


def prepare_run_dir(cfg):
    """Refuse to write over a different run unless asked to."""
    taken = list_checkpoints(cfg.output_dir) or os.path.exists(os.path.join(cfg.output_dir, "metrics.jsonl"))
    if taken and not cfg.overwrite:
        raise ConfigError(
            f"{cfg.output_dir} already holds a run; choose another --output-dir or --run-name, "
            "or pass --overwrite to replace it"
        )
    if taken:
        shutil.rmtree(cfg.output_dir)
    os.makedirs(cfg.output_dir, exist_ok=True)


class Batches:
    """Shuffled batches of indices, reshuffled each epoch from (seed, epoch): deterministic."""

    def __init__(self, n, batch_size, seed):
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.per_epoch = n // self.batch_size  # drop the ragged last batch
        self._epoch, self._perm = None, None

    def __call__(self, step):
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]


@torch.no_grad()
def validation_loss(model, vectors, targets, texts, cfg, device):
    model.eval()
    total, tokens = 0.0, 0
    for s in range(0, len(targets), cfg.eval_batch_size):
        y = pad_batch(targets[s:s + cfg.eval_batch_size], model.config.pad_id, device)
        v = vectors[s:s + cfg.eval_batch_size] if vectors is not None else model.encode(texts[s:s + cfg.eval_batch_size])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            n = int((y != model.config.pad_id).sum())
            total += float(model.loss(v, y)) * n
        tokens += n
    model.train()
    return total / max(tokens, 1)


def train(cfg, log=print):
    """Train a model as `cfg` says; returns (model, run folder, test metrics or None)."""
    t_start = time.time()
    device = resolve_device(cfg.device)
    set_seed(cfg.seed)
    prepare_run_dir(cfg)

    enc_model, enc_tok = load_encoder(cfg.encoder)
    encoder = Encoder(enc_model, enc_tok, cfg.representation, cfg.layer, cfg.max_length)
    corpus = build_corpus(cfg.data, encoder.count_tokens, **cfg.corpus_kwargs())
    log(describe(corpus.stats))
    train_texts, val_texts = corpus.texts("train"), corpus.texts("validation")
    sizes = {s: len(corpus.texts(s)) for s in ("train", "validation", "test")}
    wanted = {"train": True, "validation": cfg.validation_fraction > 0, "test": cfg.test_fraction > 0 or not cfg.no_eval}
    for split in ("train", "validation", "test"):
        if wanted[split] and not sizes[split]:
            raise ConfigError(
                f"the {split} split is empty ({sizes}): use more data, or a larger --{split}-fraction"
                + (" (or --no-eval to skip the final evaluation)" if split == "test" else "")
            )

    if cfg.decoder_tokenizer == "sentencepiece":
        dec_tok = SentencePieceTokenizer.train(train_texts, cfg.vocab_size)
    else:
        dec_tok = EncoderVocabTokenizer(enc_tok)
    model = ReconModel.from_encoder(
        encoder, dec_tok, cfg.encoder, d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
        dropout=cfg.dropout, num_prefix=cfg.num_prefix, max_target_len=cfg.max_target_len, finetune_encoder=cfg.finetune_encoder,
    ).to(device)
    n_params = sum(p.numel() for p in model.decoder.parameters())
    log(f"decoder: {n_params / 1e6:.2f}M parameters, vocabulary {dec_tok.vocab_size} ({dec_tok.kind}); device {device}")

    def targets_of(texts):
        ids = dec_tok.encode(texts)
        cut = sum(len(x) > cfg.max_target_len for x in ids)
        return [x[:cfg.max_target_len] + [dec_tok.eos_id] for x in ids], cut

    train_y, cut = targets_of(train_texts)
    val_y, _ = targets_of(val_texts)
    corpus.stats["train_targets_truncated"] = cut
    if cut:
        log(f"{cut} training texts are longer than --max-target-len {cfg.max_target_len} decoder tokens: truncated")

    train_v = val_v = None
    if not cfg.finetune_encoder:  # frozen: each vector once, then only the decoder trains
        t0 = time.time()
        with tqdm(total=len(train_texts) + len(val_texts), desc="encoding", leave=False) as bar:
            train_v = encoder.encode(train_texts, cfg.eval_batch_size, bar)
            val_v = encoder.encode(val_texts, cfg.eval_batch_size, bar) if val_texts else None
        log(f"encoded {len(train_texts) + len(val_texts)} texts in {time.time() - t0:.1f}s")
        model.decoder.set_vector_stats(train_v)
    else:  # statistics of the encoder as it starts
        model.decoder.set_vector_stats(encoder.encode(train_texts[:4096], cfg.eval_batch_size))

    batches = Batches(len(train_texts), cfg.batch_size, cfg.seed)
    max_steps = cfg.max_steps or max(1, int(cfg.epochs * batches.per_epoch))
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, max_steps, cfg.min_lr_ratio))
    meta = {"args": asdict(cfg), "git_commit": git_commit(), "data": corpus.stats, "decoder_parameters": n_params}
    with open(os.path.join(cfg.output_dir, "data.json"), "w") as f:
        json.dump(corpus.stats, f, indent=2)
    log_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    samples = (val_texts or train_texts)[:3]

    model.train()
    bar = tqdm(range(max_steps), desc="training", dynamic_ncols=True)
    loss_sum = torch.zeros((), device=device)
    tokens_seen, window_tokens, window_start, last_val = 0, 0, time.time(), None
    for step in bar:
        idx = batches(step)
        y = pad_batch([train_y[i] for i in idx], dec_tok.pad_id, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if train_v is not None:
                v = train_v[idx]
            else:
                batch = encoder.tokenize([train_texts[i] for i in idx]).to(device)
                v = encoder(batch["input_ids"], batch["attention_mask"])
            loss = model.loss(v, y)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        n_tok = sum(len(train_y[i]) for i in idx)
        tokens_seen += n_tok
        window_tokens += n_tok

        done = step + 1
        if done % 10 == 0 or done == max_steps:  # read the loss back every 10 steps, not every step
            k = 10 if done % 10 == 0 else done % 10
            train_loss = float(loss_sum) / k
            loss_sum.zero_()
            tps = window_tokens / max(time.time() - window_start, 1e-9)
            window_tokens, window_start = 0, time.time()
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            record = {"step": done, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_second": tps, "tokens_seen": tokens_seen, "elapsed": time.time() - t_start}
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"the training loss is {train_loss} at step {done}; lower --lr")
            if done % cfg.eval_steps == 0 or done == max_steps:
                msg = f"step {done}: train loss {train_loss:.3f}"
                if val_texts:
                    last_val = validation_loss(model, val_v, val_y, val_texts, cfg, device)
                    record["val_loss"] = last_val
                    msg += f", validation loss {last_val:.3f}"
                recon = model.reconstruct(samples)
                bar.write(msg)
                for ref, out in zip(samples, recon):
                    bar.write(f"  original: {ref}\n  decoded:  {out}")
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if (cfg.save_steps and done % cfg.save_steps == 0) or done == max_steps:
            meta.update(step=done, val_loss=last_val, tokens_seen=tokens_seen, train_seconds=time.time() - t_start)
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": done}
            save_checkpoint(cfg.output_dir, done, model, meta, state, cfg.save_total_limit)
    bar.close()
    log(f"trained {max_steps} steps in {time.time() - t_start:.0f}s; checkpoint in {cfg.output_dir}")

    metrics = None
    if not cfg.no_eval:
        test = corpus.texts("test")
        metrics, rows = evaluate(model, test, [corpus.lengths[t] for t in test], num_beams=cfg.num_beams,
                                 batch_size=cfg.eval_batch_size, seed=cfg.seed, log=log)
        metrics.update(split="test", checkpoint=cfg.output_dir, step=max_steps)
        out = os.path.join(cfg.output_dir, "eval-test")
        write_outputs(out, metrics, rows, title=f"recon: {cfg.output_dir}, test split")
        log(f"\ntest split ({len(test)} sentences, report in {out}/report.md):\n{headline_table(metrics)}")
    log(f"total wall time {time.time() - t_start:.0f}s")
    return model, cfg.output_dir, metrics
