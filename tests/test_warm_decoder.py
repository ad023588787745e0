"""--decoder-type encoder-warm: a decoder started from the encoder's own layers (Rothe et al. 2020)."""

import pytest
import torch

from recon.config import TrainConfig, parse
from recon.decoder import DecoderSpec
from recon.encoder import EncoderSpec
from recon.errors import ConfigError
from recon.model import ReconModel
from recon.training import make_optimizer, train
from recon.warm_decoder import WarmDecoder

from conftest import sentences

TINY = ["--vocab-size", "80", "--decoder-tokenizer", "encoder", "--max-length", "16", "--max-target-len", "16",
        "--batch-size", "8", "--eval-steps", "100", "--cache-dir", ""]


def warm(encoder, rows=None, **spec):
    cfg = encoder.model.config
    spec = {"decoder_type": "encoder-warm", "d_model": cfg.hidden_size, "n_layer": cfg.num_hidden_layers,
            "n_head": cfg.num_attention_heads, "d_ff": cfg.intermediate_size, "max_target_len": 16, "num_prefix": 2, **spec}
    dec = DecoderSpec(**spec).build(cfg.hidden_size, cfg.vocab_size)
    if rows is None:  # the encoder's own vocabulary: decoder token i is encoder token i
        rows = encoder.model.get_input_embeddings().weight.detach().clone()
    return dec, dec.init_from_encoder(encoder, rows)


def test_the_warm_decoder_computes_the_encoders_layers(tiny_encoder_dir):
    """Copied, its layers are the encoder's: one token through embeddings, LayerNorm and every layer
    gives the encoder's own hidden state for that token (one position: causal = bidirectional)."""
    encoder = EncoderSpec(tiny_encoder_dir).build()
    dec, line = warm(encoder)
    assert isinstance(dec, WarmDecoder) and "2 of its 2 layers" in line
    dec.eval()
    for token in (7, 12):
        x = dec.tok_emb.weight[token] + dec.pos_emb.weight[0]
        x = dec.emb_ln(x[None, None])
        for block in dec.blocks:
            x = block(x)
        with torch.no_grad():
            want = encoder.model(input_ids=torch.tensor([[token]])).last_hidden_state
        torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-4)


def test_the_copied_weights_train_at_their_share_of_the_rate(tiny_encoder_dir, tiny_model):
    encoder = EncoderSpec(tiny_encoder_dir).build()
    dec, _ = warm(encoder, warm_lr_ratio=0.05)
    tiny_model.decoder = dec
    cfg = parse(TrainConfig, ["--lr", "1e-3"])
    opt = make_optimizer(tiny_model, cfg, torch.device("cpu"))
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(dec.named_parameters())
    assert rate[id(named["blocks.0.qkv.weight"])] == pytest.approx(5e-5)
    assert rate[id(named["tok_emb.weight"])] == pytest.approx(5e-5)
    assert rate[id(named["prefix.weight"])] == pytest.approx(1e-3)  # no counterpart in the encoder
    assert len(rate) == len(named)  # every parameter once


def test_a_decoder_of_another_shape_is_refused_with_the_shape_to_give(tiny_encoder_dir):
    encoder = EncoderSpec(tiny_encoder_dir).build()
    with pytest.raises(ConfigError, match="--d-model 32 --n-head 2 --d-ff 64 and --n-layer at most 2"):
        warm(encoder, d_model=64)
    with pytest.raises(ConfigError, match="--n-layer at most 2"):
        warm(encoder, n_layer=3)


def test_a_warm_started_run_trains_saves_loads_and_resumes(tiny_encoder_dir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(200)) + "\n")
    common = ["--encoder", tiny_encoder_dir, "--data", str(data), "--output-dir", str(tmp_path / "run"),
              "--decoder-type", "encoder-warm", "--d-model", "32", "--n-layer", "2", "--n-head", "2",
              "--d-ff", "64", "--no-eval", *TINY]
    model, run, _ = train(parse(TrainConfig, [*common, "--max-steps", "6", "--save-steps", "3"]), log=lambda *a: None)
    assert isinstance(model.decoder, WarmDecoder)
    loaded = ReconModel.from_pretrained(run)
    assert isinstance(loaded.decoder, WarmDecoder)
    texts = sentences(3, seed=5)
    assert loaded.reconstruct(texts) == model.eval().reconstruct(texts)
    # a resumed run copies nothing, and builds the same optimizer groups as the run it continues
    resumed, _, _ = train(parse(TrainConfig, [*common, "--max-steps", "6", "--resume", str(tmp_path / "run" / "checkpoint-3")]),
                          log=lambda *a: None)
    for a, b in zip(model.decoder.parameters(), resumed.decoder.parameters()):
        torch.testing.assert_close(a, b)
