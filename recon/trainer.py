"""The optimisation loop. It knows nothing of the model (after minGPT's Trainer): a run hands it a
step function, its batches, an optimizer and hooks for logging, evaluation and saving.

Losses are read back every CHECK_EVERY steps and before every save, not every step. Under
torchrun every process runs the loop on its share of each global batch, and the processes agree
at each check on whether a SIGINT/SIGTERM has arrived, so they save and stop together.
"""

import math
import signal
import threading
import time
from dataclasses import dataclass

import torch

from recon import distributed as dist
from recon.device import autocast
from recon.errors import ReconError
from recon.progress import progress

CHECK_EVERY = 10


@dataclass
class Batch:
    """One step's work: the keyword arguments of the step function for this process's share, and
    counts over the global batch (the same on every process)."""
    inputs: dict
    tokens: int  # real target tokens
    positions: int  # sentences x the longest target: what padding costs
    flops: float = 0.0  # model FLOPs of the step (forward and backward)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was saved first."""

    def __init__(self, signum, checkpoint):
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {checkpoint}; "
                         "continue with the same command and --resume")
        self.signum, self.checkpoint = signum, checkpoint


class TrainingDiverged(ReconError):
    pass


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


class Window:
    """What happened since the last check: steps, tokens, padded positions, FLOPs, time."""

    def __init__(self, device):
        self.loss = torch.zeros((), device=device)  # summed on the device: no sync per step
        self.reset()

    def reset(self):
        self.loss.zero_()
        self.steps, self.tokens, self.positions, self.flops, self.start = 0, 0, 0, 0.0, time.time()

    def add(self, loss, batch):
        self.loss += loss.detach()
        self.steps += 1
        self.tokens += batch.tokens
        self.positions += batch.positions
        self.flops += batch.flops


class Trainer:
    """Runs steps start..max_steps of `step_fn` over `batches`.

    batches(step) -> Batch; step_fn(**batch.inputs) -> this process's summed token loss.
    Hooks:
      log(record)            every check: a dict (step, train_loss, lr, tokens_per_second, ...)
      evaluate(record) -> dict every eval_every steps and at the end: merged into that check's record;
                             `best_so_far: True` in it saves a checkpoint at this step
      save(step) -> folder   every save_every steps (0: never), at the end, and on SIGINT/SIGTERM
      stop_early(record) -> bool after each evaluation: True saves and ends the loop (self.stopped_early)
    With time_limit, the first check past that many seconds evaluates, saves and ends the loop
    (self.stopped_at_time_limit).
    Raises TrainingDiverged on a non-finite loss, TrainingInterrupted after a signal's save.
    """

    def __init__(self, step_fn, batches, optimizer, scheduler, parameters, max_steps, *, device, grad_clip=0.0,
                 eval_every=1, save_every=0, peak_flops=None, start=0, tokens_seen=0, t_start=None, time_limit=0.0,
                 precision="bf16-cuda-only"):
        self.step_fn, self.batches, self.optimizer, self.scheduler = step_fn, batches, optimizer, scheduler
        self.parameters, self.max_steps, self.device, self.grad_clip = list(parameters), max_steps, device, grad_clip
        self.eval_every, self.save_every, self.peak_flops = eval_every, save_every, peak_flops
        self.step, self.tokens_seen = start, tokens_seen
        self.precision = precision  # of the training step (recon.device.resolve_precision)
        self.log = self.evaluate = self.save = lambda *a: {}
        self.stop_early = lambda record: False
        self.stopped_early = False
        self.t_start = t_start or time.time()  # `elapsed` in the records counts from here
        self.time_limit, self.stopped_at_time_limit = time_limit, False  # seconds after t_start (0: none)

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "tokens_seen": self.tokens_seen}

    def train_step(self, batch):
        world = dist.world_size()
        with autocast(self.device, self.precision):
            loss = self.step_fn(**batch.inputs)
        # this process's share of the global batch's mean token loss; DDP averages gradients
        # over processes, so scale back up by their number
        loss = loss / batch.tokens
        (loss * world).backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def run(self):
        bar = progress(range(self.step, self.max_steps), desc="training", dynamic_ncols=True, initial=self.step,
                       total=self.max_steps, disable=not dist.is_main())
        window = Window(self.device)
        with StopSignals() as stop:
            for step in bar:
                batch = self.batches(step)
                window.add(self.train_step(batch), batch)
                self.step, self.tokens_seen = step + 1, self.tokens_seen + batch.tokens
                done = self.step
                at_save = bool(self.save_every and done % self.save_every == 0) or done == self.max_steps
                # one process alone must not stop: under torchrun the signal is agreed at a check
                if done % CHECK_EVERY and not at_save and not (dist.world_size() == 1 and stop.signum):
                    continue
                out_of_time = bool(self.time_limit) and time.time() - self.t_start > self.time_limit
                loss, stopping, out_of_time = dist.all_sum(
                    [float(window.loss), float(bool(stop.signum)), float(out_of_time)], self.device)
                out_of_time = bool(out_of_time) and done < self.max_steps
                record = self.check(loss / window.steps, window)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_second']:,.0f}",
                                lr=f"{record['lr']:.2e}", refresh=False,  # shown at the bar's next update
                                **({"mfu": f"{100 * record['mfu']:.1f}%"} if "mfu" in record else {}))
                early = False
                if done % self.eval_every == 0 or done == self.max_steps or out_of_time:
                    record.update(self.evaluate(record) or {})
                    early = done < self.max_steps and self.stop_early(record)
                    at_save = at_save or bool(record.get("best_so_far"))
                self.log(record)
                if at_save or stopping or early:
                    folder = self.save(done)
                if stopping:
                    bar.close()
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, folder)
                if early:
                    self.stopped_early = True
                    break
                if out_of_time:
                    self.stopped_at_time_limit = True
                    self.save(done)
                    break
        bar.close()

    def check(self, train_loss, window):
        """The record of the steps since the last check (and a new window)."""
        done = self.step
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"the training loss became {train_loss} between steps "
                                   f"{done - window.steps + 1} and {done}")
        seconds = max(time.time() - window.start, 1e-9)
        record = {"step": done, "train_loss": train_loss, "lr": self.scheduler.get_last_lr()[0],
                  "tokens_per_second": window.tokens / seconds, "padding": 1 - window.tokens / window.positions,
                  "tokens_seen": self.tokens_seen, "elapsed": time.time() - self.t_start}
        if self.peak_flops:
            record["mfu"] = window.flops / seconds / (self.peak_flops * dist.world_size())
        window.reset()
        return record
