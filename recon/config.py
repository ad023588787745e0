"""Command-line configuration: typed dataclasses, parsed by transformers.HfArgumentParser.

Every field is a flag (`--max-steps 100` and `--max_steps 100` both work); a single .yaml or
.json argument is read as a file of the same fields. Bad values raise ConfigError at once.
"""

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from transformers import HfArgumentParser

from recon.data import DEFAULT_CORPUS
from recon.encoder import CLS_INITS, DEFAULT_ENCODER, REPRESENTATIONS, SCRATCH
from recon.errors import ReconError


class ConfigError(ReconError):
    pass


def _check(ok, message):
    if not ok:
        raise ConfigError(message)


def _check_rerank(rerank, num_beams):
    _check(rerank in ("none", "embedding"), f"--rerank must be none or embedding, not {rerank!r}")
    _check(rerank == "none" or num_beams > 1, "--rerank embedding chooses among beams: give --num-beams 2 or more")


@dataclass
class DataConfig:
    data: str = field(default=DEFAULT_CORPUS, metadata={"help": f"'{DEFAULT_CORPUS}' (Wikipedia summaries, "
                      "the default), a .txt/.jsonl/.csv file, a save_to_disk folder or a HF dataset name"})
    text_field: str = field(default="text", metadata={"help": "the text field of a .jsonl/.csv file or dataset"})
    sentence_split: str = field(default="auto", metadata={
        "help": "split texts into sentences: auto (the default corpus yes, files no), yes, no"})
    max_length: int = field(default=32, metadata={"help": "longest text kept, in encoder tokens"})
    too_long: str = field(default="drop", metadata={
        "help": "texts over --max-length: drop them, or truncate them (the encoder sees the first tokens)"})
    validation_fraction: float = field(default=0.02, metadata={"help": "share of texts in the validation split"})
    test_fraction: float = field(default=0.05, metadata={"help": "share of texts in the test split"})
    split_seed: int = field(default=0, metadata={"help": "salt of the split hash; change it for another split"})
    max_texts: Optional[int] = field(default=None, metadata={"help": "keep at most this many texts"})

    def __post_init__(self):
        _check(self.sentence_split in ("auto", "yes", "no"), f"--sentence-split must be auto, yes or no, not {self.sentence_split!r}")
        _check(self.too_long in ("drop", "truncate"), f"--too-long must be drop or truncate, not {self.too_long!r}")
        _check(self.max_length >= 1, f"--max-length must be at least 1, not {self.max_length}")
        for name in ("validation_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(0 <= v < 1, f"--{name.replace('_', '-')} must be in [0, 1), not {v}")
        _check(self.validation_fraction + self.test_fraction < 1, "validation and test fractions leave no training data")
        _check(self.max_texts is None or self.max_texts >= 1, f"--max-texts must be at least 1, not {self.max_texts}")

    def corpus_kwargs(self):
        return dict(
            text_field=self.text_field, sentence_split={"auto": None, "yes": True, "no": False}[self.sentence_split],
            max_length=self.max_length, too_long="drop" if self.too_long == "drop" else "keep",
            validation_fraction=self.validation_fraction, test_fraction=self.test_fraction,
            split_seed=self.split_seed, max_texts=self.max_texts,
        )


@dataclass
class TrainConfig(DataConfig):
    # encoder: where the vector comes from
    encoder: str = field(default=DEFAULT_ENCODER, metadata={
        "help": "AutoModel name or local folder, or 'scratch': a small BERT trained from scratch with the decoder"})
    representation: str = field(default="cls", metadata={"help": f"the vector: one of {REPRESENTATIONS} or token:I"})
    layer: int = field(default=-1, metadata={"help": "hidden layer the vector is read from (0 = embeddings, -1 = last)"})
    finetune_encoder: bool = field(default=False, metadata={"help": "train the encoder jointly (default: frozen)"})
    finetune_layers: int = field(default=0, metadata={"help": "with --finetune-encoder: train only the top N layers (0: all)"})
    encoder_lr: float = field(default=2e-5, metadata={"help": "learning rate of a fine-tuned pretrained encoder"})
    encoder_init: str = field(default="pretrained", metadata={
        "help": "pretrained weights, or random: the same architecture with random weights (frozen unless fine-tuned)"})
    cls_init: str = field(default="token", metadata={
        "help": f"what enters at the [CLS] position: one of {CLS_INITS} (token: the [CLS] embedding, as BERT does)"})
    scratch_tokenizer: str = field(default=DEFAULT_ENCODER, metadata={"help": "--encoder scratch: whose tokenizer it uses"})
    scratch_d_model: int = field(default=256, metadata={"help": "--encoder scratch: width"})
    scratch_layers: int = field(default=4, metadata={"help": "--encoder scratch: layers"})
    scratch_heads: int = field(default=4, metadata={"help": "--encoder scratch: attention heads"})
    # decoder
    decoder_tokenizer: str = field(default="sentencepiece", metadata={
        "help": "sentencepiece (trained on the training split, cased) or encoder (the encoder's tokenizer)"})
    vocab_size: int = field(default=8000, metadata={"help": "SentencePiece vocabulary size"})
    d_model: int = field(default=256, metadata={"help": "decoder width"})
    n_layer: int = field(default=4, metadata={"help": "decoder layers"})
    n_head: int = field(default=4, metadata={"help": "decoder attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "decoder dropout"})
    num_prefix: int = field(default=1, metadata={"help": "prefix embeddings the vector is projected to"})
    max_target_len: int = field(default=64, metadata={"help": "longest decoder output, in decoder tokens"})
    # optimisation
    max_steps: int = field(default=700, metadata={"help": "optimizer steps (0: use --epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training split, when --max-steps is 0"})
    batch_size: int = field(default=64, metadata={"help": "sentences per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the decoder"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decay ends at this share of the peak"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batching and sampling"})
    bucket_pool: int = field(default=50, metadata={
        "help": "length bucketing: sort each pool of this many shuffled batches by length before cutting "
                "it into batches (less padding); 0: plain shuffled batches"})
    device: str = field(default="auto", metadata={
        "help": "auto (cuda if present), cpu, cuda, cuda:1 ...; under torchrun, cuda gives each process its LOCAL_RANK's GPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the training step (first steps are slow)"})
    peak_tflops: float = field(default=0.0, metadata={
        "help": "the GPU's dense bf16 peak in TFLOP/s for the MFU log (0: known from the device name, H100/H200/A100...)"})
    # bookkeeping
    output_dir: Optional[str] = field(default=None, metadata={"help": "run folder (default checkpoints/<run-name>)"})
    run_name: str = field(default="default", metadata={"help": "name of the run folder under checkpoints/"})
    eval_steps: int = field(default=200, metadata={"help": "validation loss and samples every N steps"})
    save_steps: int = field(default=0, metadata={"help": "write a checkpoint every N steps (0: only at the end)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept in the run folder"})
    no_eval: bool = field(default=False, metadata={"help": "skip the final evaluation on the test split"})
    num_beams: int = field(default=1, metadata={"help": "beams in the final evaluation (1: greedy)"})
    rerank: str = field(default="none", metadata={
        "help": "none, or embedding: keep the beam whose re-encoded vector is closest to the target (needs beams)"})
    eval_batch_size: int = field(default=256, metadata={"help": "sentences per batch in evaluation"})
    overwrite: bool = field(default=False, metadata={"help": "replace a different run already in --output-dir"})
    cache_dir: str = field(default=os.path.join("checkpoints", "vector_cache"), metadata={
        "help": "where a frozen encoder's vectors are kept for later runs ('' : no cache)"})
    resume: Optional[str] = field(default=None, metadata={
        "nargs": "?", "const": "auto",
        "help": "continue a run: --resume (or --resume auto) from the newest checkpoint in --output-dir, "
                "or --resume DIR from that checkpoint"})

    def __post_init__(self):
        super().__post_init__()
        _check(self.representation in REPRESENTATIONS or re.fullmatch(r"token:\d+", self.representation),
               f"--representation must be one of {REPRESENTATIONS} or token:I, not {self.representation!r}")
        _check(self.cls_init in CLS_INITS, f"--cls-init must be one of {CLS_INITS}, not {self.cls_init!r}")
        _check(self.encoder_init in ("pretrained", "random"), f"--encoder-init must be pretrained or random, not {self.encoder_init!r}")
        _check(self.finetune_layers >= 0, f"--finetune-layers must be 0 or more, not {self.finetune_layers}")
        _check(not self.finetune_layers or self.finetune_encoder, "--finetune-layers needs --finetune-encoder")
        _check(self.encoder != SCRATCH or self.encoder_init == "pretrained",
               "--encoder scratch is random by construction; drop --encoder-init")
        _check(self.scratch_d_model % self.scratch_heads == 0, "--scratch-d-model must be divisible by --scratch-heads")
        _check(self.decoder_tokenizer in ("sentencepiece", "encoder"), f"--decoder-tokenizer must be sentencepiece or encoder, not {self.decoder_tokenizer!r}")
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "num_prefix", "max_target_len", "batch_size",
                     "eval_steps", "save_total_limit", "num_beams", "eval_batch_size"):
            _check(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        _check_rerank(self.rerank, self.num_beams)
        _check(self.d_model % self.n_head == 0, f"--d-model {self.d_model} must be divisible by --n-head {self.n_head}")
        _check(self.bucket_pool >= 0, f"--bucket-pool must be 0 (off) or more, not {self.bucket_pool}")
        _check(self.peak_tflops >= 0, f"--peak-tflops must be 0 (from the device name) or more, not {self.peak_tflops}")
        _check(self.max_steps >= 0 and self.save_steps >= 0 and self.warmup_steps >= 0, "step counts cannot be negative")
        _check(self.max_steps > 0 or self.epochs > 0, "give --max-steps or --epochs a positive value")
        _check(self.lr > 0 and self.encoder_lr > 0, "learning rates must be positive")
        _check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), not {self.dropout}")
        _check(0 <= self.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], not {self.min_lr_ratio}")
        _check(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other; choose one")
        if self.output_dir is None:
            self.output_dir = os.path.join("checkpoints", self.run_name)


@dataclass
class EvalConfig:
    checkpoint: str = field(metadata={"help": "a checkpoint folder, or a run folder (its latest checkpoint)"})
    output_dir: str = field(metadata={"help": "where metrics.json, predictions.jsonl and report.md go"})
    data: Optional[str] = field(default=None, metadata={"help": "texts to evaluate (default: the training data)"})
    split: Optional[str] = field(default=None, metadata={
        "help": "train, validation, test or all (default: test on the training data, all on new data)"})
    text_field: Optional[str] = field(default=None, metadata={"help": "text field of a .jsonl/.csv (default: as trained)"})
    sentence_split: Optional[str] = field(default=None, metadata={"help": "auto, yes or no (default: as trained)"})
    max_examples: Optional[int] = field(default=None, metadata={"help": "evaluate at most this many texts"})
    num_beams: int = field(default=1, metadata={"help": "beams (1: greedy)"})
    rerank: str = field(default="none", metadata={
        "help": "none, or embedding: keep the beam whose re-encoded vector is closest to the target (needs beams)"})
    retrieval_pool: Optional[int] = field(default=None, metadata={
        "help": "training texts searched by the retrieval control (default: all of the training split; 0: skip it)"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam score / length ** this"})
    batch_size: int = field(default=256, metadata={"help": "sentences per batch"})
    encoder: Optional[str] = field(default=None, metadata={"help": "load the encoder from here instead of the recorded name"})
    representation: Optional[str] = field(default=None, metadata={
        "help": "the representation you expect; a checkpoint trained on another is refused"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda ..."})
    seed: int = field(default=0, metadata={"help": "seed of the random-vector control"})

    def __post_init__(self):
        _check(self.split in (None, "train", "validation", "test", "all"), f"--split must be train, validation, test or all, not {self.split!r}")
        _check(self.num_beams >= 1 and self.batch_size >= 1, "--num-beams and --batch-size must be at least 1")
        _check_rerank(self.rerank, self.num_beams)
        _check(self.retrieval_pool is None or self.retrieval_pool >= 0, "--retrieval-pool cannot be negative")
        _check(self.max_examples is None or self.max_examples >= 1, "--max-examples must be at least 1")


def parse(cls, argv=None):
    """Parse argv (default sys.argv[1:]) into `cls`; one .yaml/.json argument is a config file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(cls)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        if argv[0].endswith(".json"):
            (args,) = parser.parse_json_file(argv[0], allow_extra_keys=False)
        else:
            (args,) = parser.parse_yaml_file(argv[0], allow_extra_keys=False)
        return args
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args
