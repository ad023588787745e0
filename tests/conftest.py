"""Shared fixtures: a tiny random BERT encoder saved to disk, and small synthetic corpora."""

import itertools

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from recon.decoder import Decoder, DecoderSpec
from recon.encoder import Encoder, EncoderSpec
from recon.model import ReconModel
from recon.tokenizer import EncoderVocabTokenizer

ADJ = ["red", "small", "old", "quiet", "bright", "green"]
NOUN = ["cat", "dog", "bird", "horse", "fish", "lion", "owl", "fox"]
VERB = ["sees", "follows", "likes", "finds", "hears"]
PLACE = ["river", "house", "garden", "forest", "market"]
WORDS = ADJ + NOUN + VERB + PLACE + ["the", "near", "a", "and", "."]


@pytest.fixture(autouse=True)
def full_precision_inference(monkeypatch):
    """Encoders and decoders built directly in a test encode and generate in fp32, so that their vectors
    can be checked against a plain forward pass, re-encoding a text in another batch gives the same
    vector, and one way of decoding can be checked token for token against another. Runs of train.py
    and checkpoints of them still run as --encoder-precision and --generation-precision say (auto by
    default), and the precisions' own tests set them."""
    monkeypatch.setattr(Encoder, "precision", "fp32")
    monkeypatch.setattr(Decoder, "generation_precision", "fp32")


def sentences(n, seed=0):
    """n distinct simple sentences in a fixed order (shuffled by seed)."""
    all_ = [f"The {a} {x} {v} the {y} near the {p}." for a, x, v, y, p in
            itertools.product(ADJ, NOUN, VERB, NOUN, PLACE) if x != y]
    g = torch.Generator().manual_seed(seed)
    return [all_[i] for i in torch.randperm(len(all_), generator=g)[:n].tolist()]


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-layer, 32-wide random BertModel and a word-level tokenizer, saved like a hub model."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    with open(folder / "vocab.txt", "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        initializer_range=0.2)  # BERT's 0.02 gives near-identical [CLS] vectors for any input
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def tiny_model(tiny_encoder_dir):
    """A fresh ReconModel on the tiny encoder, the encoder's vocabulary for the decoder."""
    from recon.encoder import load_encoder
    model, tok = load_encoder(tiny_encoder_dir)
    torch.manual_seed(0)
    enc = Encoder(model, tok, "cls", -1, max_length=16)
    return ReconModel.from_encoder(enc, EncoderVocabTokenizer(tok), EncoderSpec(tiny_encoder_dir, max_length=16),
                                   DecoderSpec(d_model=32, n_layer=2, n_head=2, dropout=0.0, max_target_len=16)).eval()


@pytest.fixture
def text_file(tmp_path):
    def write(lines, name="data.txt"):
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)
    return write
