"""Representations and encoder modes: shapes, the right hidden states, what trains and what not."""

import pytest
import torch
from transformers import BertConfig, BertModel

from conftest import sentences
from recon.decoder import DecoderSpec
from recon.encoder import Encoder, EncoderError, EncoderSpec, load_encoder, set_trainable
from recon.model import ReconModel
from recon.tokenizer import EncoderVocabTokenizer


@pytest.fixture(scope="module")
def bert4(tiny_encoder_dir):
    """A 4-layer tiny BERT (the shared one has 2) and the tiny tokenizer."""
    _, tok = load_encoder(tiny_encoder_dir)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                 intermediate_size=64, initializer_range=0.2)).eval()
    return model, tok


def hidden_states(model, tok, texts):
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, output_hidden_states=True).hidden_states, batch["attention_mask"]


def test_every_representation_has_its_documented_shape_and_value(bert4):
    model, tok = bert4
    texts = sentences(3)
    hs, mask = hidden_states(model, tok, texts)
    want = {
        "cls": hs[-1][:, 0],
        "token:0": hs[-1][:, 0],
        "token:2": hs[-1][:, 2],
        "cls-last4-concat": torch.cat([h[:, 0] for h in hs[-4:]], dim=-1),
        "cls-last4-mean": torch.stack([h[:, 0] for h in hs[-4:]]).mean(0),
        "mean": (hs[-1] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
    }
    for rep, ref in want.items():
        enc = Encoder(model, tok, rep)
        v = enc.encode(texts)
        assert v.shape == (3, enc.dim) == ref.shape, rep
        torch.testing.assert_close(v, ref, rtol=1e-4, atol=1e-5, msg=rep)
    assert Encoder(model, tok, "cls-last4-concat").dim == 4 * 32
    assert not torch.allclose(want["cls"], want["mean"])
    # the layer flag reads that hidden state for cls, mean and token:I alike
    torch.testing.assert_close(Encoder(model, tok, "token:1", layer=2).encode(texts), hs[2][:, 1], rtol=1e-4, atol=1e-5)


def test_pretokenised_batches_equal_tokenize(bert4):
    model, tok = bert4
    enc = Encoder(model, tok, max_length=6)
    texts = sentences(5) + ["the cat"]
    ids, mask = enc.collate(enc.token_ids(texts), "cpu")
    batch = enc.tokenize(texts)
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(mask, batch["attention_mask"])


def test_pooler_is_the_tanh_projection(bert4):
    model, tok = bert4
    texts = sentences(2)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).pooler_output
    torch.testing.assert_close(Encoder(model, tok, "pooler").encode(texts), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rep, layer, message", [
    ("cls-last4-mean", 2, "reads fixed layers"),
    ("token:x", -1, "unknown representation"),
    ("cls", 9, "out of range"),
])
def test_bad_representations_are_refused(bert4, rep, layer, message):
    model, tok = bert4
    with pytest.raises(EncoderError, match=message):
        Encoder(model, tok, rep, layer=layer)


def test_random_per_forward_changes_and_learned_receives_gradient(bert4):
    model, tok = bert4
    texts = sentences(2)
    rand = Encoder(model, tok, "cls", cls_init="random-per-forward")
    assert not torch.allclose(rand.encode(texts), rand.encode(texts))
    zeros = Encoder(model, tok, "cls", cls_init="zeros")
    torch.testing.assert_close(zeros.encode(texts), zeros.encode(texts))
    assert not torch.allclose(zeros.encode(texts), Encoder(model, tok, "cls").encode(texts))
    learned = Encoder(model, tok, "cls", cls_init="learned")
    assert isinstance(learned.cls_embedding, torch.nn.Parameter)
    batch = learned.tokenize(texts)
    learned(batch["input_ids"], batch["attention_mask"]).sum().backward()
    assert learned.cls_embedding.grad is not None and learned.cls_embedding.grad.abs().sum() > 0


def test_finetune_top_layers_only(bert4):
    model, tok = bert4
    enc = Encoder(model, tok, "pooler")
    set_trainable(enc, True, top_layers=1)
    trainable = {n for n, p in enc.model.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.3." in n or n.startswith("pooler") for n in trainable)
    assert any(n.startswith("pooler") for n in trainable)
    set_trainable(enc, False)
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(EncoderError, match="out of range"):
        set_trainable(enc, True, top_layers=5)


@pytest.mark.parametrize("encoder_dropout", [False, True])
def test_a_trained_encoder_encodes_without_dropout(tiny_encoder_dir, encoder_dropout):
    spec = EncoderSpec(tiny_encoder_dir, finetune_encoder=True, encoder_dropout=encoder_dropout)
    enc = spec.build()
    model = ReconModel.from_encoder(enc, EncoderVocabTokenizer(enc.tokenizer), spec,
                                    DecoderSpec(d_model=32, n_layer=1, n_head=2)).train()
    texts = sentences(4)
    evaluated = model.encode(texts)
    torch.testing.assert_close(evaluated, model.encode(texts), rtol=0, atol=0)
    assert model.training and model.encoder.training == encoder_dropout  # its mode is given back
    batch = model.encoder.tokenize(texts)
    trained = model.encoder(batch["input_ids"], batch["attention_mask"])  # what a training step sees
    assert trained.requires_grad
    if encoder_dropout:  # dropout on in training: the vectors of training are not those of evaluation
        assert not torch.allclose(trained, evaluated, atol=1e-3)
    else:  # by default the step is trained on the vectors it is evaluated on
        torch.testing.assert_close(trained, evaluated, rtol=1e-4, atol=1e-5)


def test_random_init_keeps_the_architecture_and_changes_the_weights(tiny_encoder_dir):
    torch.manual_seed(1)
    pre = EncoderSpec(tiny_encoder_dir).build()
    rnd = EncoderSpec(tiny_encoder_dir, encoder_init="random").build()
    assert rnd.model.config.hidden_size == pre.model.config.hidden_size and rnd.base_fingerprint == pre.base_fingerprint
    w_pre = pre.model.get_input_embeddings().weight
    w_rnd = rnd.model.get_input_embeddings().weight
    assert w_pre.shape == w_rnd.shape and not torch.allclose(w_pre, w_rnd)


@pytest.mark.parametrize("kwargs", [
    dict(name="scratch", cls_init="random-per-forward"),
    dict(name="scratch", cls_init="learned"),
    dict(init="random"),
])
def test_encoder_modes_save_and_load(tiny_encoder_dir, tmp_path, kwargs):
    torch.manual_seed(2)
    name = kwargs.pop("name", tiny_encoder_dir)
    spec = EncoderSpec(name, scratch_tokenizer=tiny_encoder_dir, scratch_d_model=32, scratch_layers=2, scratch_heads=2,
                       encoder_init=kwargs.pop("init", "pretrained"), **kwargs)
    enc = spec.build()
    model = ReconModel.from_encoder(enc, EncoderVocabTokenizer(enc.tokenizer), spec,
                                    DecoderSpec(d_model=32, n_layer=1, n_head=2))
    assert model.trains_encoder == (name == "scratch")
    assert all(p.requires_grad == model.trains_encoder for p in model.encoder.parameters())
    model.save_pretrained(tmp_path / "m")
    loaded = ReconModel.from_pretrained(str(tmp_path / "m"))
    for (k, a), b in zip(model.encoder.state_dict().items(), loaded.encoder.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    if enc.cls_init != "random-per-forward":
        texts = sentences(3)
        assert loaded.reconstruct(texts) == model.eval().reconstruct(texts)
