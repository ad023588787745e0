"""The learning-rate schedule of a run, and when a run stops early.

A schedule is a list of segments, each a linear warmup then a cosine decay over its own steps. A
run starts with one segment over its steps; `--resume --extend` to a larger --max-steps appends a
segment for the added steps, so the steps already taken keep the rates they were taken at. The
segments are recorded in meta.json, and a resumed run rebuilds its schedule from them.
"""

import math

from recon.errors import ConfigError


def segment(start, end, warmup, lr, min_lr_ratio):
    return {"start": start, "end": end, "warmup": warmup, "lr": lr, "min_lr_ratio": min_lr_ratio}


def lr_factor(segments):
    """step -> multiplier of the optimizer groups' first learning rates (LambdaLR's lambda). A
    segment peaks at its `lr`, relative to the first segment's: a fine-tuned encoder's rate is
    scaled alike."""
    base = segments[0]["lr"]

    def f(step):
        seg = next((s for s in segments if step < s["end"]), segments[-1])
        i, peak = step - seg["start"], seg["lr"] / base
        if i < seg["warmup"]:
            return peak * (i + 1) / seg["warmup"]
        progress = min(1.0, (i - seg["warmup"]) / max(1, seg["end"] - seg["start"] - seg["warmup"]))
        return peak * (seg["min_lr_ratio"] + (1 - seg["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress)))
    return f


def total_steps(args, per_epoch):
    """A run's steps from its (recorded) arguments: --max-steps, or --epochs passes."""
    return args["max_steps"] or max(1, int(args["epochs"] * per_epoch))


def run_schedule(cfg, max_steps, resume_meta, per_epoch):
    """(segments, extension or None) for a run of `max_steps` steps: a new run's one segment, a
    resumed run's recorded ones, or those with a segment appended up to max_steps (--extend)."""
    recorded = resume_meta.get("schedule")
    if recorded is None:  # a new run, or one written before schedules were recorded: its arguments say
        args = resume_meta.get("args") or vars(cfg)
        recorded = [segment(0, total_steps(args, per_epoch), args["warmup_steps"], args["lr"], args["min_lr_ratio"])]
    end = recorded[-1]["end"]
    if not cfg.extend:
        if max_steps != end:  # changed_from refuses this first; a hand-edited meta.json could get here
            raise ConfigError(f"--resume: the run's schedule ends at step {end}, not {max_steps}; add --extend")
        return recorded, None
    if max_steps < end:
        raise ConfigError(f"--extend: the run's schedule already runs to step {end}; give --max-steps "
                          f"(or --epochs) beyond that, not {max_steps}")
    if max_steps == end:  # an extended run resumed again with the same command: nothing to add
        return recorded, None
    added = segment(end, max_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio)
    return recorded + [added], {"from_step": end, "to_step": max_steps, "resumed_at": resume_meta.get("step")}


class EarlyStopping:
    """Patience on the validation loss: the best loss and its step, and the checks since it."""

    def __init__(self, patience, min_delta=0.0, state=None):
        self.patience, self.min_delta = patience, min_delta
        state = state or {}
        self.best, self.best_step = state.get("best_val_loss"), state.get("best_step")
        self.since_best = state.get("checks_since_best", 0)
        self.stopped_at = state.get("stopped_at")

    def update(self, step, val_loss):
        """Record one check; True when it is the best so far."""
        if self.best is None or val_loss < self.best - self.min_delta:
            self.best, self.best_step, self.since_best = val_loss, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self):
        return bool(self.patience) and self.since_best >= self.patience

    def state(self):
        return {"patience": self.patience, "min_delta": self.min_delta, "best_val_loss": self.best,
                "best_step": self.best_step, "checks_since_best": self.since_best, "stopped_at": self.stopped_at}
