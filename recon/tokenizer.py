"""The decoder's vocabulary: a SentencePiece model trained on the training split (raw, cased
text), or the encoder's own tokenizer. Both answer the same small interface."""

import io
import os
from dataclasses import dataclass, field

import sentencepiece as spm
from transformers import AutoTokenizer

from recon.errors import ReconError, check

SPM_FILE = "decoder_spm.model"
HF_DIR = "decoder_tokenizer"


@dataclass
class TokenizerSpec:
    """How a new run makes the decoder's vocabulary (a checkpoint records the vocabulary made)."""

    decoder_tokenizer: str = field(default="sentencepiece", metadata={
        "help": "sentencepiece (trained on the training split, cased) or encoder (the encoder's tokenizer)"})
    vocab_size: int = field(default=8000, metadata={"help": "SentencePiece vocabulary size"})

    def __post_init__(self):
        check(self.decoder_tokenizer in TOKENIZERS,
              f"--decoder-tokenizer must be sentencepiece or encoder, not {self.decoder_tokenizer!r}")
        check(self.vocab_size >= 1, f"--vocab-size must be at least 1, not {self.vocab_size}")

    def build(self, train_texts, encoder_tokenizer):
        if self.decoder_tokenizer == "sentencepiece":
            return SentencePieceTokenizer.train(train_texts, self.vocab_size)
        return EncoderVocabTokenizer(encoder_tokenizer)


class SentencePieceTokenizer:
    kind = "sentencepiece"

    def __init__(self, model_proto):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.pad_id, self.bos_id, self.eos_id = self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()
        self.vocab_size = self.sp.get_piece_size()

    @classmethod
    def train(cls, texts, vocab_size=8000):
        texts = list(texts)
        buf = io.BytesIO()
        try:
            _train_spm(texts, buf, vocab_size)
        except RuntimeError as e:
            if "Vocabulary size is smaller than required_chars" in str(e):
                raise ReconError(
                    f"--vocab-size {vocab_size} is too small for this text: SentencePiece needs 256 byte "
                    "pieces plus every frequent character; use --vocab-size 400 or more"
                ) from None
            raise
        return cls(buf.getvalue())

    def encode(self, texts):
        return self.sp.encode(list(texts))

    def byte_values(self):
        """For each id, the byte a byte-fallback piece (<0xAB>) stands for, or -1."""
        return [int(self.sp.id_to_piece(i)[3:5], 16) if self.sp.is_byte(i) else -1 for i in range(self.vocab_size)]

    def never_written(self):
        return [self.pad_id, self.bos_id, self.sp.unk_id()]

    def piece_texts(self):
        """For each id, the text its piece stands for ('▁' as a space), or None (bytes, specials)."""
        sp = self.sp
        return [None if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i)
                else (sp.id_to_piece(i).replace("\u2581", " ").strip() or None) for i in range(self.vocab_size)]

    def decode(self, ids):
        return self.sp.decode(list(ids))

    def save(self, folder):
        with open(os.path.join(folder, SPM_FILE), "wb") as f:
            f.write(self.proto)

    @classmethod
    def load(cls, folder):
        with open(os.path.join(folder, SPM_FILE), "rb") as f:
            return cls(f.read())


class EncoderVocabTokenizer:
    """The encoder's tokenizer as the decoder's vocabulary: [CLS] starts, [SEP] ends."""
    kind = "encoder"

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.bos_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.eos_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)

    def encode(self, texts):
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def byte_values(self):
        return [-1] * self.vocab_size

    def never_written(self):
        return [i for i in self.tok.all_special_ids if i != self.eos_id]

    def piece_texts(self):
        return [None if i in self.tok.all_special_ids else t for i, t in enumerate(self.tok.convert_ids_to_tokens(
            list(range(self.vocab_size))))]

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)

    def save(self, folder):
        self.tok.save_pretrained(os.path.join(folder, HF_DIR))

    @classmethod
    def load(cls, folder):
        return cls(AutoTokenizer.from_pretrained(os.path.join(folder, HF_DIR)))


TOKENIZERS = {"sentencepiece": SentencePieceTokenizer, "encoder": EncoderVocabTokenizer}


def load_decoder_tokenizer(kind, folder):
    return TOKENIZERS[kind].load(folder)


# how the decoder's SentencePiece vocabulary is trained (also part of its cache key: recon/cache.py)
SPM_OPTIONS = dict(
    model_type="unigram",
    character_coverage=0.9995,
    byte_fallback=True,  # any character can still be written, byte by byte
    normalization_rule_name="identity",  # keep the text exactly as it is: cased, accents
    pad_id=0, unk_id=1, bos_id=2, eos_id=3,
    input_sentence_size=2_000_000,  # a sample of larger corpora; all of smaller ones
    hard_vocab_limit=False,  # a tiny corpus gets a smaller vocabulary instead of an error
)


def _train_spm(texts, writer, vocab_size):
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=writer, vocab_size=vocab_size,
                                   num_threads=os.cpu_count() or 1, minloglevel=2, **SPM_OPTIONS)
