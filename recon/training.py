"""Training a ReconModel: teacher-forced cross-entropy on (vector, sentence) pairs.

train() is the recipe: claim the run folder, prepare the run (recon/prepare.py), hand the
generic loop (recon/trainer.py) this model's step, batches and hooks, then evaluate on the test
split. With a frozen encoder every vector is computed once before training, so a step costs only
the decoder; a fine-tuned or scratch encoder runs inside the step (fine-tuned at its own learning
rate). Checkpoints hold everything --resume needs; SIGINT/SIGTERM save one before exiting. Under
torchrun the step runs data-parallel (DDP): each process takes its share of the global batch,
rank 0 alone writes, evaluation is sharded.
"""

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from recon import distributed as dist
from recon.batching import Batches, pad_batch
from recon.checkpoint import (git_commit, list_checkpoints, load_trainer_state, append_log, save_checkpoint,
                              truncate_log)
from recon.config import describe_decoding
from recon.corrector import adopt_base
from recon.device import autocast, resolve_precision, to_device
from recon.encoder import SCRATCH
from recon.errors import ConfigError
from recon.evaluation import evaluate_split
from recon.optim import make_muon
from recon.prepare import claim_run_folder, on_rank0, prepare, set_seed
from recon.progress import say
from recon.report import headline_table, uncertainty_lines
from recon.schedule import EarlyStopping, lr_factor, run_schedule, total_steps
from recon.speed import peak_flops
from recon.trainer import Batch, Trainer, TrainingDiverged, TrainingInterrupted

__all__ = ["TrainStep", "TrainingDiverged", "TrainingInterrupted", "train"]


def make_optimizer(model, cfg, device):
    # a decoder may ask for a share of --lr for some of its parameters (lr_scale: a warm start's copied layers)
    groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": cfg.lr * g.get("lr_scale", 1.0)}
              for g in model.decoder.optimizer_groups(cfg.weight_decay)]
    if model.trains_encoder:  # a pretrained encoder at its own rate; one from scratch at the decoder's
        lr = cfg.lr if model.config.encoder == SCRATCH else cfg.encoder_lr
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        groups.append({"params": params, "weight_decay": 0.01, "lr": lr})
    betas, fused = (0.9, 0.95), device.type == "cuda"
    if cfg.optimizer == "muon":  # Muon on the decoder blocks' matrices, AdamW (these betas) on the rest (recon/optim.py)
        return make_muon(groups, model.decoder.hidden_matrices(), betas=betas, fused=fused,
                         adamw_lr_scale=cfg.adamw_lr_scale)
    return torch.optim.AdamW(groups, betas=betas, fused=fused)


class TrainStep(torch.nn.Module):
    """The summed token loss of one batch as a module's forward, so that DDP and torch.compile
    can wrap it; the encoder runs here when it is trained (vectors None)."""

    def __init__(self, model, label_smoothing=0.0):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, targets, vectors=None, input_ids=None, attention_mask=None, sample_rate=None):
        if vectors is None:
            vectors = self.model.encoder(input_ids, attention_mask)  # (B, Dv)
        return self.model.training_loss(vectors, targets, self.label_smoothing, sample_rate)


def wrapped_step(model, cfg, device):
    """TrainStep, under DDP with several processes and torch.compile'd when asked."""
    step = TrainStep(model, cfg.label_smoothing)
    if dist.world_size() > 1:
        # a trained encoder may leave parameters without a gradient (layers above --layer, the pooler)
        step = DDP(step, device_ids=[device.index] if device.type == "cuda" else None,
                   broadcast_buffers=False, find_unused_parameters=model.trains_encoder)
    return torch.compile(step) if cfg.compile else step


def step_batches(run, batches, cfg, max_steps):
    """batches(step) -> Batch for the Trainer: this process's rows of the step's global batch (with
    scheduled sampling's rate for the step, which rises to --scheduled-sampling at step max_steps - 1)."""
    model, device, train_y, train_v = run.model, run.device, run.targets["train"], run.vectors["train"]
    lengths = batches.lengths
    rank, world, multiple = dist.rank(), dist.world_size(), 8 if cfg.compile else 1

    def batch(step):
        idx = batches(step)  # the global batch; this process takes every world-th row
        mine = idx[rank::world]
        y = pad_batch([train_y[i] for i in mine], model.config.pad_id, device, multiple)
        if train_v is not None:
            inputs = {"targets": y, "vectors": train_v[to_device(torch.tensor(mine), device)]}
        else:
            input_ids, mask = model.encoder.collate([run.train_ids[i] for i in mine], device)
            inputs = {"targets": y, "input_ids": input_ids, "attention_mask": mask}
        tokens, longest = sum(lengths[i] for i in idx), max(lengths[i] for i in idx)  # known on every process
        if cfg.scheduled_sampling:  # a 0-d tensor, so that a compiled step does not recompile for each rate
            inputs["sample_rate"] = torch.tensor(cfg.scheduled_sampling * step / max(max_steps - 1, 1), device=device)
        flops = tokens * model.decoder.flops_per_token(longest) * (4 / 3 if cfg.scheduled_sampling else 1)  # + a forward
        return Batch(inputs, tokens, len(idx) * longest, flops)
    return batch


def fit_bow_head(model, vectors, targets, cfg, log, val=None):
    """--bow-epochs: train the decoder's bag-of-words head alone (AdamW at --lr, batches of 256) on
    (N, Dv) training vectors and their targets, the rest of the decoder untouched. Returns the
    head's recall at |s| on `val` (vectors, targets) before and after, when given."""
    decoder, pad = model.decoder, model.config.pad_id
    params = decoder.bow_parameters()
    if not params or not cfg.bow_epochs:
        return None
    recall = (lambda: decoder.bow_recall(val[0], pad_batch(val[1], pad, val[0].device), pad)) if val else None
    before = recall() if recall else None
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    n, batch = len(targets), 256
    steps = max(1, round(cfg.bow_epochs * n / batch))
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * batch / n))])
    padded = pad_batch(targets, pad, vectors.device)  # (N, T) once; each batch takes its rows
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch].to(vectors.device)
        y = padded[idx]
        loss = decoder.bow_loss(vectors[idx], y, pad) / (y != pad).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    decoder.zero_grad(set_to_none=True)  # a tied head's loss also reached the token embeddings
    after = recall() if recall else None
    log(f"bag-of-words head fitted alone: {steps} steps of {batch} ({cfg.bow_epochs:g} passes)"
        + (f"; validation recall at |s| {100 * before:.1f}% -> {100 * after:.1f}%" if recall else ""))
    return {"steps": steps, "recall_before": before, "recall_after": after}


@torch.no_grad()
def validation_loss(model, vectors, targets, texts, batch_size, device):
    """Mean token loss over the validation split (each process its shard under torchrun)."""
    model.eval()
    r, w = dist.rank(), dist.world_size()
    total, tokens = 0.0, 0
    for s in range(r * batch_size, len(targets), w * batch_size):
        y = pad_batch(targets[s:s + batch_size], model.config.pad_id, device)
        v = vectors[s:s + batch_size] if vectors is not None else model.encode(texts[s:s + batch_size])
        with autocast(device):
            total += float(model.loss(v, y, reduction="sum"))
        tokens += int((y != model.config.pad_id).sum())
    model.train()
    total, tokens = dist.all_sum([total, tokens], device)
    return total / max(tokens, 1)


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


class RunHooks:
    """What the loop calls for this run: log each check, evaluate (validation loss and three
    samples), save checkpoints; and restore a resumed run's state before the loop starts."""

    def __init__(self, cfg, run, trainer, meta, log):
        self.cfg, self.run, self.trainer, self.meta, self.log = cfg, run, trainer, meta, log
        self.val_texts = run.corpus.texts("validation")
        self.samples = (self.val_texts or run.corpus.texts("train"))[:3]
        self.last_val = None
        self.saved = {}  # step -> folder written by this process
        self.stopping = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta,
                                      run.resume_meta.get("early_stopping"))
        if cfg.extend:  # more steps: the patience counts afresh, the best so far stays the one to beat
            self.stopping.since_best, self.stopping.stopped_at = 0, None

    def restore(self, folder):
        run, trainer = self.run, self.trainer
        run.model.load_weights(folder)
        state = load_trainer_state(folder, run.device)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == dist.world_size():
            set_rng_state(per_rank[dist.rank()])
        else:
            self.log(f"note: {folder} was written by {len(per_rank)} processes, this run has {dist.world_size()}: "
                     "dropout draws will differ from the uninterrupted run")
        trainer.step, trainer.tokens_seen, self.last_val = state["step"], state["tokens_seen"], run.resume_meta.get("val_loss")
        if dist.is_main():
            truncate_log(self.cfg.output_dir, trainer.step)
        self.log(f"resumed from {folder} at step {trainer.step}")

    def record(self, record):
        if dist.is_main():
            append_log(self.cfg.output_dir, record)

    def evaluate(self, record):
        run, out = self.run, {}
        msg = f"step {record['step']}: train loss {record['train_loss']:.3f}"
        improved = False
        if self.val_texts:
            self.last_val = out["val_loss"] = validation_loss(
                run.model, run.vectors["validation"], run.targets["validation"], self.val_texts,
                self.cfg.eval_batch_size, run.device)
            msg += f", validation loss {self.last_val:.3f}"
            improved = self.stopping.update(record["step"], self.last_val)
            if self.stopping.patience:
                msg += (" (best so far)" if improved else
                        f" (best {self.stopping.best:.3f} at step {self.stopping.best_step}; "
                        f"{self.stopping.since_best}/{self.stopping.patience} checks without improvement)")
        if dist.is_main():
            self.log(msg)
            for ref, pred in zip(self.samples, run.model.reconstruct(self.samples)):
                self.log(f"  original: {ref}\n  decoded:  {pred}")
        if improved and self.stopping.patience:
            out["best_so_far"] = True  # the loop saves this step: the best checkpoint is written when reached
        return out

    def stop_early(self, record):
        if self.stopping.should_stop:
            self.stopping.stopped_at = record["step"]
            self.log(f"early stopping at step {record['step']}: the validation loss has not improved on "
                     f"{self.stopping.best:.4f} (step {self.stopping.best_step}) for {self.stopping.patience} checks")
            return True
        return False

    def save(self, step):
        """Every process takes part (RNG states are gathered); rank 0 writes. The best checkpoint
        of an early-stopping run is kept whatever --save-total-limit says."""
        if step in self.saved and not self.trainer.stopped_at_time_limit:  # the best, written at its evaluation
            return self.saved[step]
        states = dist.gather_objects(rng_state())
        self.meta.update(step=step, val_loss=self.last_val, tokens_seen=self.trainer.tokens_seen,
                         train_seconds=time.time() - self.trainer.t_start)
        if self.stopping.patience:
            self.meta["early_stopping"] = self.stopping.state()
        if self.trainer.stopped_at_time_limit:
            self.meta["stopped_at_time_limit"] = step
        state = {**self.trainer.state_dict(), "rng": states[0],
                 **({"rng_per_rank": states} if dist.world_size() > 1 else {})}
        folder = os.path.join(self.cfg.output_dir, f"checkpoint-{step}")
        if dist.is_main():
            keep = [self.stopping.best_step] if self.stopping.patience else []
            folder = save_checkpoint(self.cfg.output_dir, step, self.run.model, self.meta, state,
                                     self.cfg.save_total_limit, protect=keep)
        dist.barrier()
        self.saved[step] = folder
        return folder

    def diverged(self, error):
        kept = list_checkpoints(self.cfg.output_dir)
        return TrainingDiverged(
            f"{error}; " + (f"the last good checkpoint, {self.cfg.output_dir}/checkpoint-{kept[-1]}, is intact; "
                            if kept else "no checkpoint was written; ")
            + "lower --lr or raise --warmup-steps and start again")


def final_evaluation(cfg, run, step, log, checkpoint=None):
    split = cfg.eval_split
    out = os.path.join(cfg.output_dir, f"eval-{split}")
    # vector feedback keeps each sentence's candidates closest to its target: the rerank's choice is its step 0
    loop = dict(correction_steps=cfg.feedback_steps, correction_beam=cfg.num_beams) if cfg.feedback_steps else {}
    metrics = evaluate_split(run.model, run.corpus, split, out, log=log,
                             info={"checkpoint": checkpoint or cfg.output_dir, "step": step, "data": cfg.data},
                             max_examples=cfg.eval_max_examples,
                             num_beams=cfg.num_beams, batch_size=cfg.eval_batch_size, seed=cfg.seed,
                             rerank="none" if loop else cfg.rerank, **loop,
                             no_repeat_ngram=cfg.no_repeat_ngram, no_repeat_match=cfg.no_repeat_match,
                             pool_texts=run.corpus.texts("train"),
                             pool_vectors=run.vectors["train"] if run.pool_vectors is None else run.pool_vectors)
    log(f"\n{split} split ({metrics['num_examples']} sentences, "
        f"{describe_decoding(cfg.num_beams, cfg.rerank, cfg.feedback_steps)}; "
        f"report in {out}/report.md):\n{headline_table(metrics)}\n{uncertainty_lines(metrics)}")
    return metrics


def resolved_precisions(cfg, model, device, log):
    """What the training step, the encoder's passes outside it and generation run in (bf16 or fp32), logged."""
    precision, encoder_precision = resolve_precision(cfg.precision, device), model.encoder.resolved_precision()
    generation_precision = model.resolved_generation_precision()
    log(f"training step precision: {precision}" + (f" (--precision {cfg.precision})" if cfg.precision != precision else "")
        + f"; the encoder's passes outside it: {encoder_precision}; generation: {generation_precision}")
    return {"precision": precision, "encoder_precision": encoder_precision, "generation_precision": generation_precision}


def train(cfg, log=say):
    """Train a model as `cfg` says; returns (model, run folder, test metrics or None).

    Under torchrun (see recon/distributed.py) every process calls this; rank 0 alone logs and
    writes files, and every process returns the same model and metrics.
    """
    t_start = time.time()
    if cfg.base_model:
        adopt_base(cfg)  # a corrector: the base run's encoder, vocabulary, decoder shape and data
    device = dist.setup(cfg.device)
    log = log if dist.is_main() else (lambda *a, **k: None)
    if cfg.batch_size < dist.world_size():
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the {dist.world_size()} processes; each needs a share")
    set_seed(cfg.seed)
    with on_rank0(lambda: claim_run_folder(cfg)) or contextlib.nullcontext():
        run = prepare(cfg, device, log)
        lengths = [len(y) for y in run.targets["train"]]
        batches = Batches(lengths, cfg.batch_size, cfg.seed, cfg.bucket_pool)
        max_steps = total_steps(vars(cfg), batches.per_epoch)
        segments, extension = run_schedule(cfg, max_steps, run.resume_meta, batches.per_epoch)
        padding = {"padding_fraction": batches.padding(),
                   "padding_fraction_unbucketed": Batches(lengths, cfg.batch_size, cfg.seed).padding()}
        log(f"padding: {100 * padding['padding_fraction']:.1f}% of decoder positions"
            + (f" (bucketed in pools of {cfg.bucket_pool} batches; {100 * padding['padding_fraction_unbucketed']:.1f}% "
               "unbucketed)" if cfg.bucket_pool else ""))
        optimizer = make_optimizer(run.model, cfg, device)
        precisions = resolved_precisions(cfg, run.model, device, log)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(segments))
        meta = {"args": asdict(cfg), "git_commit": git_commit(), "data": run.corpus.stats,
                "decoder_parameters": run.model.decoder_parameters(), "world_size": dist.world_size(), **padding,
                "max_steps": max_steps, "schedule": segments, **precisions,
                "extensions": run.resume_meta.get("extensions", [])}
        if extension:
            meta["extensions"] = meta["extensions"] + [{**extension, "git_commit": meta["git_commit"],
                                                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
            log(f"extending the schedule from step {extension['from_step']} to {max_steps}: warmup "
                f"{cfg.warmup_steps} steps to lr {cfg.lr:g}, cosine down to {cfg.min_lr_ratio:g} of it (recorded in meta.json)")
        if dist.world_size() > 1:  # the same weights everywhere (DDP checks), but each process its own dropout
            torch.manual_seed(cfg.seed + 1000 * dist.rank())
        trainer = Trainer(wrapped_step(run.model, cfg, device), step_batches(run, batches, cfg, max_steps), optimizer, scheduler,
                          run.model.parameters(), max_steps, device=device, grad_clip=cfg.grad_clip,
                          eval_every=cfg.eval_steps, save_every=cfg.save_steps,
                          peak_flops=peak_flops(device, cfg.peak_tflops), t_start=t_start, time_limit=cfg.time_limit,
                          precision=precisions["precision"])
        hooks = RunHooks(cfg, run, trainer, meta, log)
        if run.resume_from:
            hooks.restore(run.resume_from)
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):  # the rate of the next step,
                group["lr"] = base * lr_factor(segments)(trainer.step)  # which an extension changes
            if hooks.stopping.stopped_at is not None:  # resumed without --extend: training is over
                trainer.max_steps = trainer.step
                log(f"this run stopped early at step {trainer.step}; --extend trains it further")
        elif cfg.bow_epochs and run.vectors["train"] is not None:  # a new run on cached vectors
            val = (run.vectors["validation"], run.targets["validation"]) if run.targets["validation"] else None
            meta["bow_fit"] = fit_bow_head(run.model, run.vectors["train"], run.targets["train"], cfg, log, val)
        if dist.is_main():
            with open(os.path.join(cfg.output_dir, "data.json"), "w") as f:
                json.dump(run.corpus.stats, f, indent=2)
        trainer.log, trainer.evaluate, trainer.save = hooks.record, hooks.evaluate, hooks.save
        trainer.stop_early = hooks.stop_early
        run.model.train()
        try:
            trainer.run()
        except TrainingDiverged as e:
            raise hooks.diverged(e) from None
        if trainer.stopped_at_time_limit:
            log(f"stopped at step {trainer.step} of {max_steps}: --time-limit {cfg.time_limit:g} s reached "
                "(the schedule had not ended; --resume continues it)")
        log(f"trained {trainer.step} steps in {time.time() - t_start:.0f}s; checkpoint in {cfg.output_dir}")
        step, best = trainer.step, None
        if hooks.stopping.patience and hooks.stopping.best_step not in (None, step):
            step, best = hooks.stopping.best_step, os.path.join(cfg.output_dir, f"checkpoint-{hooks.stopping.best_step}")
            run.model.load_weights(best)
            log(f"the best checkpoint is step {step} (validation loss {hooks.stopping.best:.4f}): evaluated, "
                "and what evaluate.py and ReconModel.from_pretrained load from the run folder")
        metrics = None if cfg.no_eval else final_evaluation(cfg, run, step, log, best)
    log(f"total wall time {time.time() - t_start:.0f}s")
    dist.barrier()
    return run.model, cfg.output_dir, metrics
