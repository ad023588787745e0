"""The controls are computed on the right vectors, retrieval and rerank do what they say."""

import json
import os

import pytest
import torch

from conftest import sentences
from recon.evaluation import (cosine, decode, derangement, evaluate, matched_random_vectors, nearest,
                              write_outputs)
from recon.metrics import ngram_overlap


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_never_keeps_a_vector_in_place(n):
    for seed in range(20):
        perm = derangement(n, seed)
        assert sorted(perm.tolist()) == list(range(n))
        assert all(perm[i] != i for i in range(n))


def test_matched_random_vectors_match_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(20000, 4, generator=g) @ torch.tensor([[2.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, .5, 0], [0, 0, 0, 3]]) + 5
    fake = matched_random_vectors(real, seed=1)
    torch.testing.assert_close(fake.mean(0), real.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(fake.T), torch.cov(real.T), atol=0.25, rtol=0.05)
    assert not torch.allclose(fake[:10], real[:10])


def test_retrieval_finds_the_exact_sentence_when_it_is_in_the_pool(tiny_model):
    texts = sentences(30)
    pool = sentences(200, seed=5) + texts
    vecs, pool_vecs = tiny_model.encode(texts), tiny_model.encode(pool)
    assert [pool[i] for i in nearest(vecs, pool_vecs, chunk=7)] == texts
    tiny_model.decoder.set_vector_stats(pool_vecs)
    s = tiny_model.decoder.standardize
    assert [pool[i] for i in nearest(s(vecs), s(pool_vecs))] == texts


def test_controls_use_the_right_vectors(tiny_model):
    texts = sentences(12)
    pool = sentences(50, seed=3) + texts[:5]  # five evaluated texts "leak" into training
    metrics, rows = evaluate(tiny_model, texts, [len(t.split()) for t in texts], seed=4, pool_texts=pool, log=lambda *a: None)
    vecs = tiny_model.encode(texts)
    shuffled = tiny_model.generate_from_vectors(vecs[derangement(len(texts), 4)])
    assert [r["control_shuffled_prediction"] for r in rows] == shuffled
    assert [r["prediction"] for r in rows] == tiny_model.generate_from_vectors(vecs)
    random = tiny_model.generate_from_vectors(matched_random_vectors(vecs, 4))
    assert [r["control_random_prediction"] for r in rows] == random
    assert metrics["overlap_texts_in_train"] == 5
    assert all(r["control_retrieval_prediction"] == r["reference"] for r in rows[:5])
    assert metrics["control_retrieval_exact_match"] >= 100 * 5 / 12
    assert metrics["retrieval_pool_size"] == len(pool)
    re_vecs = tiny_model.encode([r["prediction"] for r in rows])
    assert [r["cosine"] for r in rows] == pytest.approx(cosine(re_vecs, vecs).tolist())
    std_cos = cosine(tiny_model.decoder.standardize(re_vecs), tiny_model.decoder.standardize(vecs))
    assert [r["cosine_standardized"] for r in rows] == pytest.approx(std_cos.tolist())


def test_rerank_keeps_the_closest_candidate(tiny_model):
    texts = sentences(6)
    vecs = tiny_model.encode(texts)
    chosen, plain = decode(tiny_model, vecs, num_beams=4, length_penalty=1.0, batch_size=4, rerank="embedding")
    _, beams = tiny_model.generate_from_vectors(vecs, num_beams=4, batch_size=4, return_all=True)
    assert plain == [row[0][0] for row in beams]
    for v, pick, row in zip(vecs, chosen, beams):
        cands = [t for t, _ in row]
        s = tiny_model.decoder.standardize
        cos = cosine(s(tiny_model.encode(cands)), s(v[None]).expand(len(cands), -1))
        assert pick in cands and cosine(s(tiny_model.encode([pick])), s(v[None]))[0] == pytest.approx(cos.max().item(), abs=1e-6)


def test_report_and_plot_are_written(tiny_model, tmp_path):
    texts = sentences(9)
    metrics, rows = evaluate(tiny_model, texts, [8, 9, 12, 17, 25, 30, 33, 40, 70], num_beams=2, rerank="embedding",
                             pool_texts=sentences(20, seed=2), log=lambda *a: None)
    text = write_outputs(str(tmp_path), metrics, rows)
    assert set(metrics["by_length"]) == {"1-8", "9-16", "17-24", "25-32", "33-48", "65+"}
    assert "nearest training sentence" in text and "Plain beam search" in text and "cosine" in text
    assert os.path.getsize(tmp_path / "length_curves.png") > 5000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["decoding"]["rerank"] == "embedding" and "beam_without_rerank_bleu" in saved
    # intervals around each headline figure, and the reconstruction paired with each control
    for key in ("bleu", "token_f1", "exact_match", "cosine_standardized"):
        lo, hi = saved["intervals"][key]
        assert lo <= saved[key] + 1e-9 and saved[key] <= hi + 1e-9
    assert set(saved["versus_controls"]) == {"random", "shuffled", "retrieval"}
    retrieval = saved["versus_controls"]["retrieval"]["bleu"]
    assert retrieval["a"] == pytest.approx(saved["bleu"]) and retrieval["b"] == pytest.approx(saved["control_retrieval_bleu"])
    assert "95% intervals over 1,000 resamples of the 9 evaluated sentences" in text and "nearest training sentence: " in text


def test_ngram_overlap():
    assert ngram_overlap("the cat sat", "The cat sat down.") == 1.0
    assert ngram_overlap("the cat sat", "a cat sat") == 0.5
    assert ngram_overlap("cat", "the cat") == 1.0 and ngram_overlap("", "x") == 0.0


def test_reranked_controls_decode_as_the_reconstruction_does(tiny_model):
    """With the rerank, the random control is reranked towards its random vectors and the
    shuffled control is the reranked reconstructions permuted (plain beams would flatter the rerank)."""
    texts = sentences(10)
    metrics, rows = evaluate(tiny_model, texts, [len(t.split()) for t in texts], num_beams=3, rerank="embedding",
                             seed=2, log=lambda *a: None)
    vecs = tiny_model.encode(texts)
    rerank = dict(num_beams=3, rerank="embedding")
    predictions = tiny_model.generate_from_vectors(vecs, **rerank)
    assert [r["prediction"] for r in rows] == predictions
    assert [r["control_random_prediction"] for r in rows] == \
        tiny_model.generate_from_vectors(matched_random_vectors(vecs, 2), **rerank)
    assert [r["control_shuffled_prediction"] for r in rows] == [predictions[i] for i in derangement(10, 2).tolist()]
    assert metrics["decoding"]["rerank"] == "embedding"


def test_generate_from_vectors_reranks_as_evaluation_does(tiny_model):
    vecs = tiny_model.encode(sentences(5))
    chosen, top = decode(tiny_model, vecs, num_beams=4, batch_size=2, rerank="embedding")
    assert tiny_model.generate_from_vectors(vecs, num_beams=4, rerank="embedding") == chosen
    assert tiny_model.reconstruct(sentences(5), num_beams=4, rerank="embedding") == chosen
    assert tiny_model.generate_from_vectors(vecs, num_beams=4) == top
    with pytest.raises(ValueError, match="num_beams 2 or more"):
        tiny_model.generate_from_vectors(vecs, rerank="embedding")
    for bad, says in ((dict(rerank="cosine"), "none or embedding"), (dict(rerank="embedding", num_beams=4,
                                                                         return_all=True), "use rerank_beams")):
        with pytest.raises(ValueError, match=says):
            tiny_model.generate_from_vectors(vecs, **bad)


def test_decoding_defaults():
    """train.py evaluates with 8 beams and the rerank, then 3 steps of vector feedback, a corrector run
    greedily (its loop is its search); evaluate.py decodes as the checkpoint's run evaluated itself,
    greedy for older runs."""
    from recon.config import ConfigError, EvalConfig, TrainConfig
    assert (TrainConfig().num_beams, TrainConfig().rerank, TrainConfig().feedback_steps) == (8, "embedding", 3)
    assert (TrainConfig(num_beams=1).num_beams, TrainConfig(num_beams=1).rerank) == (1, "none")
    assert TrainConfig(num_beams=4).rerank == "embedding"
    assert TrainConfig(num_beams=4, rerank="none", feedback_steps=0).rerank == "none"  # plain beam search
    with pytest.raises(ConfigError, match="drop --rerank none, or give --feedback-steps 0"):
        TrainConfig(num_beams=4, rerank="none")
    corrector = TrainConfig(base_model="runs/base")
    assert (corrector.num_beams, corrector.rerank, corrector.feedback_steps) == (1, "none", 0)
    with pytest.raises(ConfigError, match="--num-beams 2 or more"):
        TrainConfig(num_beams=1, rerank="embedding")

    def ev(recorded, **flags):
        cfg = EvalConfig(checkpoint="x", output_dir="y", **flags).with_decoding_of(recorded)
        return cfg.num_beams, cfg.rerank
    assert ev({}) == (1, "none")  # a run from before the decoding was recorded
    assert ev({"num_beams": 8, "rerank": "embedding"}) == (8, "embedding")
    assert ev({"num_beams": 8, "rerank": "embedding"}, num_beams=1) == (1, "none")
    assert ev({"num_beams": 8, "rerank": "embedding"}, rerank="none") == (8, "none")
    assert ev({}, num_beams=2) == (2, "embedding")
    assert ev({"base_model": "b", "num_beams": 1, "rerank": "none"}, num_beams=3) == (3, "none")
    with pytest.raises(ConfigError, match="drop --rerank"):
        ev({"base_model": "b", "num_beams": 1, "rerank": "none"}, num_beams=3, rerank="embedding")
    with pytest.raises(ConfigError, match="--num-beams 2 or more"):
        ev({}, rerank="embedding")
