"""--optimizer muon: Muon on the decoder blocks' matrices, AdamW on the rest, one schedule, exact resume."""

import json
import os
import shutil

import pytest
import torch

import train as train_script
from conftest import sentences
from recon import ReconModel
from recon.config import TrainConfig, parse
from recon.decoder import Decoder, DecoderSpec
from recon.errors import ConfigError
from recon.optim import make_muon
from recon.training import make_optimizer

MODEL = ["--d-model", "32", "--n-layer", "2", "--n-head", "2", "--batch-size", "16", "--vocab-size", "300",
         "--validation-fraction", "0.1", "--test-fraction", "0.1", "--no-eval", "--cache-dir", ""]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.txt"
    path.write_text("\n".join(sentences(200)) + "\n")
    return str(path)


def decoder():
    torch.manual_seed(0)
    return Decoder(DecoderSpec(d_model=32, n_layer=2, n_head=2, num_prefix=2, max_target_len=16), 24, 50)


def test_muon_takes_the_block_matrices_and_adamw_everything_else():
    dec = decoder()
    opt = make_muon(dec.optimizer_groups(0.1), dec.hidden_matrices())
    muon = [p for g in opt.muon.param_groups for p in g["params"]]
    adamw = [p for g in opt.adamw.param_groups for p in g["params"]]
    in_blocks = {id(m.weight) for m in dec.blocks.modules() if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in muon} == in_blocks and len(muon) == 4 * 2  # qkv, proj and two MLP matrices a block
    assert all(p.dim() == 2 for p in muon)
    assert not {id(p) for p in muon} & {id(p) for p in adamw}
    assert {id(p) for p in muon + adamw} == {id(p) for p in dec.parameters()}
    for p in (dec.tok_emb.weight, dec.prefix.weight, dec.bow.weight, dec.ln_f.weight):
        assert any(p is q for q in adamw)
    assert all(g["weight_decay"] == 0.1 for g in opt.muon.param_groups)  # the matrices keep their decay
    # a schedule that sets the outer groups' rate sets the rate both optimizers step with
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.25)
    assert {g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups} == {0.25 * 1e-3}


def test_adamw_lr_scale_moves_the_adamw_half_alone_through_the_schedule(tiny_model, tiny_encoder_dir, tmp_path):
    cfg = parse(TrainConfig, ["--encoder", tiny_encoder_dir, "--output-dir", str(tmp_path / "x"),
                              "--lr", "2e-3", "--weight-decay", "0", "--adamw-lr-scale", "3"])
    opt = make_optimizer(tiny_model, cfg, torch.device("cpu"))
    assert {g["lr"] for g in opt.muon.param_groups} == {2e-3}
    assert [g["lr"] for g in opt.adamw.param_groups] == pytest.approx([6e-3] * len(opt.adamw.param_groups))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # warmup and decay scale both halves alike
    assert {g["lr"] for g in opt.muon.param_groups} == {1e-3}
    assert [g["lr"] for g in opt.adamw.param_groups] == pytest.approx([3e-3] * len(opt.adamw.param_groups))
    # AdamW's first step is the sign of the gradient times its rate: the scaled rate is the one it steps with
    dec = tiny_model.decoder
    before = dec.prefix.weight.detach().clone()
    for p in dec.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    step = (dec.prefix.weight.detach() - before).abs()
    torch.testing.assert_close(step, torch.full_like(step, 3e-3), rtol=1e-3, atol=1e-6)


def test_adamw_lr_scale_without_muon_is_refused(tiny_encoder_dir, tmp_path):
    with pytest.raises(ConfigError, match="--adamw-lr-scale 3 splits --optimizer muon's rates"):
        parse(TrainConfig, ["--encoder", tiny_encoder_dir, "--output-dir", str(tmp_path / "x"),
                            "--optimizer", "adamw", "--adamw-lr-scale", "3"])
    with pytest.raises(ConfigError, match="--adamw-lr-scale must be positive"):
        parse(TrainConfig, ["--encoder", tiny_encoder_dir, "--output-dir", str(tmp_path / "x"), "--adamw-lr-scale", "0"])


def test_a_muon_step_orthogonalises_the_matrices_and_adamw_steps_the_rest():
    dec = decoder()
    opt = make_muon(dec.optimizer_groups(0.0), dec.hidden_matrices())
    before = {n: p.detach().clone() for n, p in dec.named_parameters()}
    for p in dec.parameters():
        p.grad = torch.randn_like(p)
    q1, _ = torch.linalg.qr(torch.randn(32, 32))
    q2, _ = torch.linalg.qr(torch.randn(32, 32))
    grad = q1 @ torch.diag(torch.logspace(0, 2, 32)) @ q2  # singular values 1 to 100
    dec.blocks[0].proj.weight.grad = grad
    opt.step()
    moved = {n: p.detach() - before[n] for n, p in dec.named_parameters()}
    # Muon: the update of a block matrix is (nearly) orthogonal, every singular value alike
    s = torch.linalg.svdvals(moved["blocks.0.proj.weight"])
    assert s.max() / s.min() < 2  # the gradient's: 100
    # AdamW's first step is the sign of the gradient: a matrix outside the blocks gets no orthogonal update
    torch.testing.assert_close(moved["prefix.weight"].abs(), torch.full_like(moved["prefix.weight"], 1e-3),
                               rtol=1e-3, atol=1e-6)
    assert (moved["ln_f.bias"] != 0).all()


def test_a_muon_run_resumes_to_the_same_losses_and_weights(tiny_encoder_dir, data, tmp_path):
    def args(out, *extra):
        return ["--encoder", tiny_encoder_dir, "--data", data, "--output-dir", str(out), *MODEL, "--optimizer", "muon",
                "--max-steps", "20", "--save-steps", "10", "--save-total-limit", "5", "--warmup-steps", "4", *extra]

    assert train_script.main(args(tmp_path / "ref")) == 0
    shutil.copytree(tmp_path / "ref", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoint-20")  # as if killed after step 10's checkpoint
    assert train_script.main(args(tmp_path / "run", "--resume")) == 0

    def losses(out):
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return {r["step"]: r["train_loss"] for r in map(json.loads, f)}

    want, got = losses(tmp_path / "ref"), losses(tmp_path / "run")
    assert sorted(got) == sorted(want) and max(want) == 20
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
    a, b = (ReconModel.from_pretrained(str(tmp_path / n)) for n in ("ref", "run"))
    for (name, p), q in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # the optimizer is part of the run: resuming with the other one is refused
    assert train_script.main(args(tmp_path / "run", "--resume", "--max-steps", "30", "--optimizer", "adamw")) == 2


def test_an_unknown_optimizer_is_refused(tiny_encoder_dir, data, tmp_path):
    with pytest.raises(ConfigError, match="--optimizer must be one of"):
        parse(TrainConfig, ["--encoder", tiny_encoder_dir, "--data", data, "--optimizer", "sgd",
                            "--output-dir", str(tmp_path / "x")])
