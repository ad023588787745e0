"""experiments/scst.py: the sequence-level update moves probability toward the better-rewarded sample."""

import importlib.util
import os

import pytest
import torch

from recon.batching import pad_batch


def load_scst():
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "scst.py")
    spec = importlib.util.spec_from_file_location("scst", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_leave_one_out_baseline_is_the_mean_of_the_other_samples():
    scst = load_scst()
    adv = scst.leave_one_out(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))
    assert torch.allclose(adv, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [0.0, 0.0, 0.0, 0.0]]))


def test_reinforce_step_raises_the_rewarded_sample_and_lowers_the_other(tiny_model):
    scst = load_scst()
    c = tiny_model.config
    vector = torch.randn(1, c.vector_dim)
    tok = tiny_model.tokenizer
    good, bad = (tok.encode([t])[0] + [c.eos_id] for t in ("the red cat sees the dog .", "the fish near ."))
    samples = pad_batch([good, bad], c.pad_id, torch.device("cpu"))
    vectors = vector.repeat(2, 1)

    def logp():
        with torch.no_grad():
            return -tiny_model.loss(vectors, samples, reduction="none").view(samples.shape).sum(1)

    before = logp()
    opt = torch.optim.SGD(tiny_model.decoder.parameters(), lr=0.05)
    tiny_model.decoder.train()
    advantages = scst.leave_one_out(torch.tensor([[0.9, 0.1]])).view(-1)  # the first sample earned more
    scst.reinforce_loss(tiny_model, vectors, samples, advantages).backward()
    opt.step()
    tiny_model.decoder.eval()
    after = logp()
    assert after[0] > before[0] and after[1] < before[1]
    # equal rewards: no update at all
    opt.zero_grad()
    equal = scst.leave_one_out(torch.tensor([[0.5, 0.5]])).view(-1)
    scst.reinforce_loss(tiny_model, vectors, samples, equal).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in tiny_model.decoder.parameters())


def test_reward_kinds_score_a_perfect_sample_one():
    scst = load_scst()
    ref = "The old owl hears the fox near the river."
    assert scst.reward(ref, ref, "bleu") == pytest.approx(1.0)
    assert scst.reward(ref, ref, "f1") == pytest.approx(1.0)
    assert scst.reward("A cat.", ref, "bleu+f1") < 0.2
