"""Command-line configuration: typed dataclasses, parsed by transformers.HfArgumentParser.

TrainConfig is made of the specs of the parts it describes (data, encoder, decoder, decoder
vocabulary) and of how they are trained (OptimConfig) and run (RunConfig); each field and default
is written once, in its spec. Every field is a flag (`--max-steps 100` and `--max_steps 100`
both work; a prefix such as `--max-step` does not); a single .yaml or .json argument is read as a
file of the same fields. Bad values raise ConfigError at once; an unknown flag, UsageError.
"""

import difflib
import json
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Optional

import yaml
from transformers import HfArgumentParser

from recon.cache import DEFAULT_CACHE_DIR
from recon.corrector import ABLATIONS as CORRECTION_ABLATIONS, CORRECTOR_OWN, CorrectionSpec
from recon.data import DataConfig
from recon.decoder import DecoderSpec
from recon.device import PRECISIONS
from recon.encoder import EncoderSpec
from recon.errors import ConfigError, check
from recon.optim import OPTIMIZERS
from recon.spec import ModelSpecs, field_names, with_unrecorded
from recon.tokenizer import TokenizerSpec

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "OptimConfig", "ProbeConfig", "ProbeSettings", "RunConfig",
           "TrainConfig", "UsageError", "parse"]

RERANKS = ("none", "embedding")
DEFAULT_BEAMS = 8  # train.py's final evaluation: 8 beams, the one whose re-encoded vector is nearest the target
DEFAULT_FEEDBACK_STEPS = 3  # and then 3 steps of vector feedback (recon/feedback.py), as many beams a step


NO_REPEAT_MATCH_HELP = ("how --no-repeat-ngram compares n-grams: loose (decoder pieces as the metrics see words: case, "
                        "accents and punctuation ignored, so 'Sea' repeats 'sea' and 'a, b' repeats 'a b') or exact "
                        "(token ids, as runs before this flag did)")


def _check_no_repeat(ngram, match):
    check(ngram == 0 or ngram >= 2, "--no-repeat-ngram must be 0 (off) or 2 or more")
    check(match in ("loose", "exact"), f"--no-repeat-match must be loose or exact, not {match!r}")


def resolve_decoding(num_beams, rerank, beams_if_unset=1):
    """The decoding flags as given, unset ones filled in: num_beams from `beams_if_unset`, rerank
    embedding when there are beams to choose among (`--num-beams 4` reranks; `--rerank none` keeps
    plain beam search), none for greedy."""
    num_beams = beams_if_unset if num_beams is None else num_beams
    return num_beams, rerank if rerank is not None else ("embedding" if num_beams > 1 else "none")


def describe_decoding(num_beams, rerank, feedback_steps=0):
    """The decoding in words, for logs; feedback_steps: then that many steps of vector feedback (whose
    first pass keeps the closest beam, as the rerank does)."""
    rerank = "embedding" if feedback_steps else rerank
    first = "greedy" if num_beams == 1 else f"{num_beams} beams, " + (
        "the one whose re-encoded vector is nearest the target" if rerank == "embedding" else "the top one")
    return first + (f", then {feedback_steps} steps of vector feedback" if feedback_steps else "")


def _check_rerank(rerank, num_beams):
    check(rerank in RERANKS, f"--rerank must be none or embedding, not {rerank!r}")
    check(rerank == "none" or num_beams > 1, "--rerank embedding chooses among beams: give --num-beams 2 or more")


@dataclass
class OptimConfig:
    """How the model is trained: everything here changes the numbers, so a resume keeps it."""

    max_steps: int = field(default=2150, metadata={"help": "optimizer steps (0: use --epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training split, when --max-steps is 0"})
    batch_size: int = field(default=64, metadata={"help": "sentences per optimizer step"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate of the decoder"})
    encoder_lr: float = field(default=2e-5, metadata={"help": "learning rate of a fine-tuned pretrained encoder"})
    weight_decay: float = field(default=0.1, metadata={"help": "weight decay of the matrices (decoupled, AdamW's and Muon's)"})
    optimizer: str = field(default="muon", metadata={
        "help": "muon: Muon (torch.optim.Muon, its update scaled to AdamW's size, so --lr and --weight-decay keep "
                "their meaning) on the hidden matrices of the decoder's blocks, AdamW on the rest (recon/optim.py); "
                "adamw: AdamW on everything (runs recorded before the flag trained so)"})
    adamw_lr_scale: float = field(default=1.0, metadata={
        "help": "under --optimizer muon: the learning rate of its AdamW half (embeddings, the vector's projections, "
                "the bag-of-words head, norms, biases; a trained encoder's --encoder-lr too) as a multiple of its rate; "
                "Muon's matrices keep --lr"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "the training loss spreads this share of each token's target over the whole vocabulary "
                "(Szegedy et al. 2016); validation losses are always unsmoothed (0: off)"})
    scheduled_sampling: float = field(default=0.0, metadata={
        "help": "scheduled sampling (Bengio et al. 2015): each of the decoder's input tokens after [BOS] is its own "
                "greedy guess from a teacher-forced pass without gradient (Mihaylova & Liu 2019) instead of the "
                "reference with a probability that rises linearly from 0 at the first step to this value at the "
                "last; a step costs one more forward pass; validation losses stay teacher-forced (0: off)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decay ends at this share of the peak"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batching and sampling"})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "stop when the validation loss (checked every --eval-steps) has not improved for this many checks; "
                "the best checkpoint is kept, evaluated and loaded from the run folder (0: off)"})
    early_stopping_min_delta: float = field(default=0.0, metadata={
        "help": "a validation loss counts as better only when it is at least this much below the best"})
    bow_epochs: float = field(default=0.0, metadata={
        "help": "before the first step of a new run, fit the bag-of-words head alone on the training vectors "
                "for this many passes (frozen encoders: the vectors are cached), so that its prior says what the "
                "vector holds from the start (0: off)"})
    precision: str = field(default="auto", metadata={
        "help": "the training step's precision: auto (bf16 autocast where the hardware multiplies bf16 natively: "
                "CUDA, or a CPU with AVX512-BF16 or AMX; fp32 elsewhere), bf16, fp32, or bf16-cuda-only (bf16 on "
                "CUDA, fp32 on a CPU: runs before this flag). Generation follows --generation-precision, the encoder's "
                "passes --encoder-precision"})
    bucket_pool: int = field(default=50, metadata={
        "help": "length bucketing: sort each pool of this many shuffled batches by length before cutting "
                "it into batches (less padding); 0: plain shuffled batches"})

    def __post_init__(self):
        check(self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}")
        check(self.bucket_pool >= 0, f"--bucket-pool must be 0 (off) or more, not {self.bucket_pool}")
        check(self.max_steps >= 0 and self.warmup_steps >= 0, "step counts cannot be negative")
        check(self.max_steps > 0 or self.epochs > 0, "give --max-steps or --epochs a positive value")
        check(self.bow_epochs >= 0, f"--bow-epochs cannot be negative, not {self.bow_epochs}")
        check(self.lr > 0 and self.encoder_lr > 0, "learning rates must be positive")
        check(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        check(self.adamw_lr_scale > 0, f"--adamw-lr-scale must be positive, not {self.adamw_lr_scale}")
        check(self.adamw_lr_scale == 1.0 or self.optimizer == "muon",
              f"--adamw-lr-scale {self.adamw_lr_scale:g} splits --optimizer muon's rates; under --optimizer "
              f"{self.optimizer} every parameter takes --lr: drop the flag or add --optimizer muon")
        check(self.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}, not {self.precision!r}")
        check(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), not {self.label_smoothing}")
        check(0 <= self.scheduled_sampling <= 1,
              f"--scheduled-sampling must be in [0, 1] (a share of input tokens), not {self.scheduled_sampling}")
        check(0 <= self.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], not {self.min_lr_ratio}")
        check(self.early_stopping_patience >= 0 and self.early_stopping_min_delta >= 0,
              "--early-stopping-patience and --early-stopping-min-delta cannot be negative")


ENCODER_PRECISION_HELP = ("the encoder's passes outside a training step (the vector cache, the rerank's and the "
                          "evaluation's re-encodings): auto (bf16 autocast where the hardware multiplies bf16 "
                          "natively: CUDA, or a CPU with AVX512-BF16 or AMX; fp32 elsewhere), bf16, fp32, or "
                          "bf16-cuda-only (runs before this flag). The cache keeps bf16 and fp32 apart; on the CPU "
                          "default's sentences they agree to a standardised cosine of 0.99998 (docs/speed.md)")


GENERATION_PRECISION_HELP = ("the decoder's generation (the evaluation's decoding, its controls' and the correction "
                             "loops'): bf16-cuda-only (bf16 autocast on CUDA, fp32 on a CPU), auto (bf16 autocast where "
                             "the hardware multiplies bf16 natively: CUDA, or a CPU with AVX512-BF16 or AMX), bf16 or "
                             "fp32. On the CPU default's validation split bf16 beam search was 1.2x faster and 0.08-0.12 "
                             "BLEU lower on two checkpoints, so a CPU generates in fp32 by default (docs/speed.md)")


def check_precision(flag, value):
    check(value is None or value in PRECISIONS, f"--{flag} must be one of {PRECISIONS}, not {value!r}")


@dataclass
class RunConfig:
    """Where and how a run executes and reports: none of it changes the trained numbers, so a
    resume may change any of it."""

    device: str = field(default="auto", metadata={
        "help": "auto (cuda if present), cpu, cuda, cuda:1 ...; under torchrun, cuda gives each process its LOCAL_RANK's GPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the training step (first steps are slow)"})
    peak_tflops: float = field(default=0.0, metadata={
        "help": "the GPU's dense bf16 peak in TFLOP/s for the MFU log (0: known from the device name, H100/H200/A100...)"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "run folder (default checkpoints/<run-name>)"})
    run_name: str = field(default="default", metadata={"help": "name of the run folder under checkpoints/"})
    time_limit: float = field(default=0.0, metadata={
        "help": "seconds after the run started (set-up included) past which it saves, stops and evaluates at the "
                "next check, before its schedule ends (0: none): for a machine lent for a fixed time"})
    eval_steps: int = field(default=200, metadata={"help": "validation loss and samples every N steps"})
    save_steps: int = field(default=0, metadata={"help": "write a checkpoint every N steps (0: only at the end)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept in the run folder"})
    no_eval: bool = field(default=False, metadata={"help": "skip the final evaluation"})
    eval_split: str = field(default="test", metadata={
        "help": "the split of the final evaluation (written to eval-<split>/): test, or validation to choose "
                "settings without looking at the test split"})
    num_beams: Optional[int] = field(default=None, metadata={
        "help": f"beams in the final evaluation (1: greedy; default {DEFAULT_BEAMS}, and 1 for a corrector "
                "(--base-model), whose correction loop is its search)"})
    rerank: Optional[str] = field(default=None, metadata={
        "help": "none, or embedding: keep the beam whose re-encoded vector is closest to the target (default: "
                "embedding when there are beams, none for greedy)"})
    feedback_steps: Optional[int] = field(default=None, metadata={
        "help": "final evaluation: after the first pass, this many steps of vector feedback (recon/feedback.py): "
                "the decoded vector moved by a step of the residual of its output's re-encoded vector, each step "
                "decoded with --num-beams beams, every sentence keeping the --num-beams candidates closest to its "
                "target (the first pass's among them, so step 0 is the rerank's choice); the controls go through "
                f"the same loop. 0: the first pass alone (default {DEFAULT_FEEDBACK_STEPS} for a plain run, 0 for a "
                "corrector, whose correction loop is its search; docs/training.md)"})
    eval_batch_size: int = field(default=256, metadata={"help": "sentences per batch in evaluation"})
    encoder_precision: str = field(default="auto", metadata={"help": ENCODER_PRECISION_HELP})
    generation_precision: str = field(default="bf16-cuda-only", metadata={"help": GENERATION_PRECISION_HELP})
    eval_max_examples: Optional[int] = field(default=None, metadata={
        "help": "final evaluation: at most this many texts of the split, its first (a random sample: the split "
                "is drawn at random), for a machine lent for a fixed time (default: all)"})
    no_repeat_ngram: int = field(default=3, metadata={
        "help": "final evaluation: never write the same n-gram of decoder tokens twice (0: off; the report "
                "gives the share of references this makes unreachable)"})
    no_repeat_match: str = field(default="loose", metadata={"help": NO_REPEAT_MATCH_HELP})
    overwrite: bool = field(default=False, metadata={"help": "replace a different run already in --output-dir"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={
        "help": "where a frozen encoder's vectors and the decoder's SentencePiece vocabularies are kept for "
                "later runs ('' : no cache)"})
    resume: Optional[str] = field(default=None, metadata={
        "nargs": "?", "const": "auto",
        "help": "continue a run: --resume (or --resume auto) from the newest checkpoint in --output-dir, "
                "or --resume DIR from that checkpoint"})
    extend: bool = field(default=False, metadata={
        "help": "with --resume: train a run past the end of its schedule, to a larger --max-steps (or --epochs); the "
                "added steps get a schedule segment of their own (--warmup-steps up to --lr, cosine down to "
                "--min-lr-ratio), recorded in meta.json"})

    def __post_init__(self):
        self.num_beams, self.rerank = resolve_decoding(self.num_beams, self.rerank, DEFAULT_BEAMS)
        check(self.feedback_steps is None or self.feedback_steps >= 0, "--feedback-steps cannot be negative")
        for name in ("eval_steps", "save_total_limit", "num_beams", "eval_batch_size"):
            check(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        check(self.save_steps >= 0 and self.time_limit >= 0, "step counts and --time-limit cannot be negative")
        check(self.eval_max_examples is None or self.eval_max_examples >= 1, "--eval-max-examples must be at least 1")
        _check_no_repeat(self.no_repeat_ngram, self.no_repeat_match)
        check(self.eval_split in ("test", "validation"), f"--eval-split must be test or validation, not {self.eval_split!r}")
        _check_rerank(self.rerank, self.num_beams)
        check(self.peak_tflops >= 0, f"--peak-tflops must be 0 (from the device name) or more, not {self.peak_tflops}")
        check_precision("encoder-precision", self.encoder_precision)
        check_precision("generation-precision", self.generation_precision)
        check(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other; choose one")
        check(not self.extend or self.resume, "--extend continues a run: give --resume (or --resume DIR) too")
        if self.output_dir is None:
            self.output_dir = os.path.join("checkpoints", self.run_name)


# what a resumed run must share with the run it continues: every field that changes the numbers
TRAINED_WITH = (DataConfig, EncoderSpec, DecoderSpec, TokenizerSpec, OptimConfig, CorrectionSpec)
CORRECTOR_ONLY = field_names(CorrectionSpec) - {"base_model"} | {"corrector_init", "corrector_copy"}
# what a corrector takes from its base run (--base-model), so the command line leaves it unset
FROM_BASE = (DataConfig, EncoderSpec, DecoderSpec, TokenizerSpec)
# what --extend may change: the length and shape of the added schedule segment, and when to stop
EXTENDABLE = ("max_steps", "epochs", "lr", "warmup_steps", "min_lr_ratio", "early_stopping_patience",
              "early_stopping_min_delta")


@dataclass
class TrainConfig(ModelSpecs, RunConfig, CorrectionSpec, OptimConfig, TokenizerSpec, DecoderSpec, EncoderSpec,
                  DataConfig):
    """Every flag of train.py: the specs of the model's parts, how they are trained and run."""

    def __post_init__(self):
        if self.base_model:  # a corrector's final evaluation runs its loop from the base's greedy pass
            self.num_beams, self.rerank = resolve_decoding(self.num_beams, self.rerank)
            check(not self.feedback_steps, "a corrector's final evaluation runs its own correction loop: drop "
                  "--feedback-steps (evaluate.py --feedback-steps N runs vector feedback on its base first)")
            self.feedback_steps = 0
        elif self.feedback_steps is None:
            self.feedback_steps = DEFAULT_FEEDBACK_STEPS
        for spec in TRAINED_WITH + (RunConfig,):
            spec.__post_init__(self)
        check(not (self.feedback_steps and self.num_beams > 1 and self.rerank == "none"),
              "vector feedback keeps each sentence's candidates closest to its target, so its step 0 is the rerank's "
              "choice: drop --rerank none, or give --feedback-steps 0 for plain beam search")
        check(not self.early_stopping_patience or self.validation_fraction > 0,
              "--early-stopping-patience watches the validation loss: give --validation-fraction above 0")
        check(self.base_model or self.decoder_type != "corrector",
              "--decoder-type corrector corrects a base run: give --base-model RUN_DIR (it sets the type)")
        if self.base_model and self.decoder_type != "corrector":  # not yet filled in from the base run
            defaults = {f.name: f.default for f in fields(self)}
            set_here = sorted(k for k in field_names(*FROM_BASE) - set(CORRECTOR_OWN) if getattr(self, k) != defaults[k])
            check(not set_here, f"with --base-model the encoder, vocabulary, decoder shape and data are the base "
                                f"run's; drop {set_here}")

    def changed_from(self, recorded):
        """The fields that change the numbers and differ from `recorded` (meta "args"; a field
        that a run of older code did not record meant what spec.UNRECORDED says, or its default)."""
        was = {**{f.name: f.default for f in fields(self)}, **with_unrecorded(recorded)}
        names = field_names(*TRAINED_WITH)
        if not self.base_model and not was["base_model"]:  # a plain run: what only a corrector reads cannot differ
            names -= CORRECTOR_ONLY
        return sorted(k for k in names if was[k] != getattr(self, k))


@dataclass
class ProbeSettings:
    """How the probes are built and trained (recon/probes.py)."""

    probe_tasks: str = field(default="sentlen,wc,bshift,bow", metadata={"help": "comma-separated: sentlen, wc, bshift, bow"})
    probe_hidden: int = field(default=512, metadata={"help": "width of the hidden-layer probe"})
    probe_epochs: int = field(default=10, metadata={"help": "passes over the training split (the best on validation kept)"})
    wc_words: int = field(default=1000, metadata={"help": "word content: how many mid-frequency words"})
    bow_vocab: int = field(default=10000, metadata={"help": "bag of words: the commonest words it predicts"})
    stop_words: int = field(default=50, metadata={"help": "bag of words: the commonest words left out of 'content words'"})
    encoder_precision: Optional[str] = field(default=None, metadata={
        "help": ENCODER_PRECISION_HELP.replace("the encoder's passes", "the encoder's passes (default: as a checkpoint's "
                                               "run recorded it, auto for runs of now; auto for a bare encoder)", 1)})
    generation_precision: Optional[str] = field(default=None, metadata={
        "help": GENERATION_PRECISION_HELP.replace("the decoder's generation", "a checkpoint's generation (default: as "
                                                  "its run recorded it)", 1)})

    def __post_init__(self):
        check_precision("encoder-precision", self.encoder_precision)
        check_precision("generation-precision", self.generation_precision)
        tasks = self.probe_tasks.split(",")
        check(bool(tasks) and all(t in ("sentlen", "wc", "bshift", "bow") for t in tasks),
              f"--probe-tasks must name some of sentlen, wc, bshift, bow, not {self.probe_tasks!r}")
        check(min(self.probe_hidden, self.probe_epochs, self.wc_words, self.bow_vocab) >= 1 and self.stop_words >= 0,
              "probe sizes and epochs must be at least 1")


@dataclass(kw_only=True)
class EvalConfig(ProbeSettings):
    checkpoint: str = field(metadata={"help": "a checkpoint folder, or a run folder (its latest checkpoint)"})
    output_dir: str = field(metadata={"help": "where metrics.json, predictions.jsonl and report.md go"})
    data: Optional[str] = field(default=None, metadata={"help": "texts to evaluate (default: the training data)"})
    split: Optional[str] = field(default=None, metadata={
        "help": "train, validation, test or all (default: test on the training data, all on new data)"})
    text_field: Optional[str] = field(default=None, metadata={"help": "text field of a .jsonl/.csv (default: as trained)"})
    sentence_split: Optional[str] = field(default=None, metadata={"help": "auto, yes or no (default: as trained)"})
    max_examples: Optional[int] = field(default=None, metadata={"help": "evaluate at most this many texts"})
    num_beams: Optional[int] = field(default=None, metadata={
        "help": "beams (1: greedy; default: as the checkpoint's run evaluated itself, its --num-beams, 1 for runs "
                "from before that was recorded; with a correction loop, its first pass: every beam a candidate, the "
                "base's greedy pass scored beside it)"})
    rerank: Optional[str] = field(default=None, metadata={
        "help": "none, or embedding: keep the beam whose re-encoded vector is closest to the target (default: as "
                "the checkpoint's run evaluated itself when --num-beams is not given; else embedding when there "
                "are beams, none for greedy)"})
    retrieval_pool: Optional[int] = field(default=None, metadata={
        "help": "training texts searched by the retrieval control (default: all of the training split; 0: skip it)"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam score / length ** this"})
    no_repeat_ngram: int = field(default=3, metadata={
        "help": "never write the same n-gram of decoder tokens twice (0: off; the report gives the share of "
                "references this makes unreachable)"})
    no_repeat_match: str = field(default="loose", metadata={"help": NO_REPEAT_MATCH_HELP})
    batch_size: int = field(default=256, metadata={"help": "sentences per batch"})
    encoder: Optional[str] = field(default=None, metadata={"help": "load the encoder from here instead of the recorded name"})
    representation: Optional[str] = field(default=None, metadata={
        "help": "the representation you expect; a checkpoint trained on another is refused"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda ..."})
    seed: int = field(default=0, metadata={"help": "seed of the random-vector control (and of the probes)"})
    correction_steps: Optional[int] = field(default=None, metadata={
        "help": "a corrector checkpoint: correct the base's output this many times (default 1); a plain "
                "checkpoint: correct its output through its input this many times (vector feedback, "
                "recon/feedback.py; none by default). Writes correction.md/.json/.png: every step beside the "
                "ablations of --correction-ablations"})
    correction_beam: int = field(default=1, metadata={
        "help": "keep this many candidates per sentence at each step, those whose re-encoded vectors are "
                "closest to the target (vec2text's sequence beam); each step decodes with this many beams"})
    correction_ablations: str = field(default="no-feedback,random-target,reference", metadata={
        "help": "the ablations run beside the correction, comma-separated: no-feedback, random-target, "
                "reference (a corrector: one greedy step from the reference itself), or none"})
    feedback_rate: Optional[float] = field(default=None, metadata={
        "help": "vector feedback (a plain checkpoint with --correction-steps, or a corrector's --feedback-steps): "
                "each step moves the decoded vector by this times the residual of the re-encoded output (default 0.15)"})
    feedback_steps: int = field(default=0, metadata={
        "help": "a corrector: this many steps of vector feedback on its base first (keeping --feedback-beam "
                "candidates), then --correction-steps of the corrector on the --correction-beam closest it kept"})
    feedback_beam: Optional[int] = field(default=None, metadata={
        "help": "with --feedback-steps: the feedback's beams a step and candidates kept (default --correction-beam)"})
    correction_rate: float = field(default=0.0, metadata={
        "help": "a corrector: after each step move its target slot by this times the residual of the step's "
                "closest new candidate, as vector feedback moves the base's input (0: the target itself)"})
    companions: str = field(default="", metadata={
        "help": "comma-separated plain checkpoints of the same vectors (the same command at other --seed): vector "
                "feedback (--correction-steps on a plain checkpoint, --feedback-steps on a corrector) runs on each "
                "decoder too, and every step writes the closest of all their candidates (docs/correction.md)"})
    probes: bool = field(default=False, metadata={
        "help": "also train the probes (recon/probes.py) on the checkpoint's vectors of its training data and set "
                "its decoder beside them (its greedy pass, and this evaluation's decoding when it covers the whole "
                "test split): probes.md in --output-dir"})

    def __post_init__(self):
        ProbeSettings.__post_init__(self)
        self.loop_of_run = False  # set by with_decoding_of: the run's own vector feedback, not asked for here
        check(self.split in (None, "train", "validation", "test", "all"),
              f"--split must be train, validation, test or all, not {self.split!r}")
        check((self.num_beams or 1) >= 1 and self.batch_size >= 1, "--num-beams and --batch-size must be at least 1")
        _check_no_repeat(self.no_repeat_ngram, self.no_repeat_match)
        # unset --num-beams / --rerank are the checkpoint's own decoding: with_decoding_of fills them in
        check(self.rerank in (None,) + RERANKS, f"--rerank must be none or embedding, not {self.rerank!r}")
        check(self.retrieval_pool is None or self.retrieval_pool >= 0, "--retrieval-pool cannot be negative")
        check(self.max_examples is None or self.max_examples >= 1, "--max-examples must be at least 1")
        check(self.correction_steps is None or self.correction_steps >= 0, "--correction-steps cannot be negative")
        check(self.correction_beam >= 1, "--correction-beam must be at least 1")
        check(self.feedback_steps >= 0, "--feedback-steps cannot be negative")
        check(self.feedback_beam is None or self.feedback_beam >= 1, "--feedback-beam must be at least 1")
        check(self.correction_rate >= 0, f"--correction-rate cannot be negative, not {self.correction_rate}")
        check(self.feedback_rate is None or self.feedback_rate > 0,
              f"--feedback-rate must be above 0 (a step of the residual), not {self.feedback_rate}")
        check(all(n in CORRECTION_ABLATIONS for n in self.ablations),
              f"--correction-ablations must name some of {', '.join(CORRECTION_ABLATIONS)} (or be none), "
              f"not {self.correction_ablations!r}")

    def with_decoding_of(self, recorded):
        """Fill in unset --num-beams / --rerank from a run's recorded flags (meta "args"): evaluate.py
        decodes as the run's own final evaluation did (greedy for runs from before it was recorded), its
        vector feedback included when no decoding or loop flag is given (loop_of_run)."""
        corrector = bool(recorded.get("base_model"))
        asked = (self.num_beams, self.rerank, self.correction_steps, self.feedback_rate,
                 self.correction_beam) != (None, None, None, None, 1)
        self.loop_of_run = not corrector and not asked and bool(recorded.get("feedback_steps"))
        if self.loop_of_run:  # the run's final evaluation ended with vector feedback: its beams, its steps
            self.num_beams = recorded.get("num_beams", 1)
            self.correction_steps, self.correction_beam = recorded["feedback_steps"], self.num_beams
            self.rerank = "none"
        loop = corrector or bool(self.correction_steps)  # vector feedback on a plain checkpoint is a loop too
        if self.num_beams is None and loop and not corrector:
            self.num_beams, self.rerank = 1, self.rerank or "none"  # step 0 is the single pass, as a corrector's
        elif self.num_beams is None:
            self.num_beams, self.rerank = recorded.get("num_beams", 1), self.rerank or recorded.get("rerank", "none")
        elif self.rerank is None:
            self.rerank = "none" if loop else resolve_decoding(self.num_beams, None)[1]
        check(not (loop and self.rerank != "none"), "a correction loop keeps its candidates by their re-encoded "
              "vectors already (--correction-beam K); drop --rerank")
        _check_rerank(self.rerank, self.num_beams)
        return self

    @property
    def ablations(self):
        """--correction-ablations as a list of names."""
        return [] if self.correction_ablations == "none" else self.correction_ablations.split(",")


@dataclass
class ProbeConfig(ProbeSettings, EncoderSpec, DataConfig):
    """python -m recon.probes: probes on a checkpoint's vectors (and its decoder beside them), or on
    any encoder and representation given by the encoder flags."""

    output_dir: Optional[str] = field(default=None, metadata={"help": "where probes.json, probes.md and probes.png go"})
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "a checkpoint or run folder: its encoder, data and decoder (the encoder and data flags then stay unset)"})
    export_senteval: Optional[str] = field(default=None, metadata={
        "help": "also write the tasks in SentEval's probing format into this folder"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "the vector cache ('': none)"})
    batch_size: int = field(default=256, metadata={"help": "sentences per encoding batch"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda ..."})
    seed: int = field(default=0, metadata={"help": "seed of the probes, the random control and the word swaps"})
    predictions: str = field(default="", metadata={
        "help": "comma-separated predictions.jsonl files of evaluate.py on the whole test split of the same data: "
                "each decoding (beams, rerank, correction) set beside the probe too"})

    def __post_init__(self):
        for spec in (DataConfig, EncoderSpec, ProbeSettings):
            spec.__post_init__(self)
        check(self.output_dir is not None, "--output-dir is required: where the probe results go")
        missing = [p for p in self.prediction_files if not os.path.isfile(p)]
        check(not missing, f"--predictions: no such file {', '.join(missing)}; give the predictions.jsonl that "
                           "evaluate.py wrote for the test split")
        if self.checkpoint:
            defaults = {f.name: f.default for f in fields(self)}
            set_here = sorted(k for k in field_names(DataConfig, EncoderSpec) if getattr(self, k) != defaults[k])
            check(not set_here, f"with --checkpoint the encoder and data are the checkpoint's; drop {set_here}")

    @property
    def prediction_files(self):
        return [p for p in self.predictions.split(",") if p]


class UsageError(ConfigError):
    """An argument the command does not know; `usage` is the line to print before the error."""

    def __init__(self, message, usage):
        super().__init__(message)
        self.usage = usage


def _unknown(given, known, usage, what):
    """UsageError for the unknown `given` (argv items or file keys), with the closest known names."""
    hints = []
    for name in given:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6) if not name[:1].isdigit() else []
        if close:
            hints.append(f"{name}: did you mean {' or '.join(close)}?")
    return UsageError(f"unrecognized {what}: {' '.join(given)}" + (f" ({'; '.join(hints)})" if hints else ""), usage)


def parse(cls, argv=None):
    """Parse argv (default sys.argv[1:]) into `cls`; one .yaml/.json argument is a config file.
    Only whole flag names are taken; an unknown one raises UsageError naming the closest."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = f"python {os.path.basename(sys.argv[0]) or 'train.py'}"
    usage = f"usage: {prog} [--flag VALUE ...] | {prog} CONFIG.yaml   ({prog} --help lists every flag)"
    parser = HfArgumentParser(cls, allow_abbrev=False, usage=usage[len("usage: "):])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        with open(argv[0]) as f:
            values = json.load(f) if argv[0].endswith(".json") else yaml.safe_load(f)
        if not isinstance(values, dict):
            raise ConfigError(f"{argv[0]} must hold a mapping of field: value")
        known = [f.name for f in fields(cls)]
        extra = sorted(set(values) - set(known))
        if extra:
            raise _unknown(extra, known, usage, f"fields in {argv[0]}")
        (args,) = parser.parse_dict(values)
        return args
    (args, rest) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                     look_for_args_file=False)
    if rest:
        flags = [a for a in parser._option_string_actions if a.startswith("--") and "_" not in a]
        raise _unknown(rest, flags, usage, "arguments")
    return args
