"""The corrector: a decoder class that reads the target vector, a hypothesis and its vector; trained
for a base run with train.py --base-model, run in a loop by evaluate.py and ReconModel."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from conftest import sentences
from recon import ReconModel
from recon.corrector import (NOISE_GRID, Corrector, _precision_key, calibrate_noise, corrupt, mixed_rows, noised_vectors,
                             warm_start)
from recon.decoder import DecoderSpec
from recon.decoding import beam_search, greedy
from recon.evaluation import derangement
from recon.metrics import corpus_scores


@pytest.mark.parametrize("copy", [False, True])
def test_the_corrector_reads_the_hypothesis_and_decodes_the_same_with_the_cache(copy):
    torch.manual_seed(3)
    dec = Corrector(DecoderSpec(decoder_type="corrector", d_model=32, n_layer=2, n_head=2, dropout=0.0,
                                max_target_len=12, corrector_copy=copy), 16, 40).eval()
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
    target, hyp = torch.randn(4, 16), torch.randn(4, 16)
    hyps = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    rows = dec.rows(target, hyp, hyps)
    assert rows.shape == (4, 16 + 16 + 12) and rows[1, 33:].eq(-1).all()
    ids = torch.randint(4, 40, (4, 6))
    with torch.no_grad():
        base = dec(rows, ids)
        other = dec(dec.rows(target, hyp, [[5, 6, 8], [8], [9, 10, 11, 12, 13], [14, 15]]), ids)
        trimmed = dec(rows[:, :16 + 16 + 5], ids)  # ids past the longest hypothesis are never read
    assert not torch.allclose(base[0], other[0]) and torch.allclose(base[1:], other[1:], atol=1e-5)
    torch.testing.assert_close(base, trimmed)
    fast = greedy(dec, rows, 2, 3, max_new_tokens=10)
    slow = []
    for r in rows:
        out = [2]
        for _ in range(10):
            with torch.no_grad():
                nxt = dec(r[None], torch.tensor([out]))[0, -1].argmax().item()
            if nxt == 3:
                break
            out.append(nxt)
        slow.append(out[1:])
    assert fast == slow
    assert beam_search(dec, rows, 2, 3, 3, max_new_tokens=10) == \
        [beam_search(dec, rows[i:i + 1], 2, 3, 3, max_new_tokens=10)[0] for i in range(4)]


@pytest.fixture(scope="module")
def runs(tiny_encoder_dir, tmp_path_factory):
    """A base run stopped early (poor hypotheses) and a corrector trained for it on the same sentences."""
    tmp = tmp_path_factory.mktemp("corrector")
    data = tmp / "data.txt"
    data.write_text("\n".join(sentences(16)) + "\n")
    common = ["--cache-dir", str(tmp / "cache"), "--eval-steps", "1000"]
    base = ["--encoder", tiny_encoder_dir, "--data", str(data), "--output-dir", str(tmp / "base"), "--d-model", "64",
            "--n-layer", "2", "--n-head", "2", "--vocab-size", "400", "--decoder-tokenizer", "encoder",
            "--validation-fraction", "0", "--test-fraction", "0", "--max-steps", "40", "--batch-size", "16",
            "--dropout", "0", "--no-eval", *common]
    assert train_script.main(base) == 0
    corrector = ["--base-model", str(tmp / "base"), "--output-dir", str(tmp / "corr"), "--max-steps", "200",
                 "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "20", "--no-eval", "--hypothesis-noise", "0", *common]
    assert train_script.main(corrector) == 0
    return tmp, base, corrector


def test_a_corrector_trains_for_its_base_and_corrects_its_output(runs, capsys):
    tmp, _, corrector = runs
    model = ReconModel.from_pretrained(str(tmp / "corr"))
    assert model.config.decoder_type == "corrector" and model.base is not None
    assert model.config.base_model == str(tmp / "base" / "checkpoint-40")
    assert json.loads((tmp / "corr" / "data.json").read_text())["hypothesis_noise"] == 0.0
    texts = sentences(16)  # the training sentences: the base barely trained on them, the corrector longer
    base_out = model.base.reconstruct(texts)
    once = model.reconstruct(texts, correction_steps=1)
    three = model.reconstruct(texts, correction_steps=3, correction_beam=2)
    assert model.reconstruct(texts, correction_steps=0) == base_out
    truth = [t.lower() for t in texts]  # the tiny encoder's vocabulary is uncased
    bleu = lambda preds: corpus_scores(preds, truth)["bleu"]  # noqa: E731
    assert bleu(once) > bleu(base_out) + 10 and bleu(three) > bleu(base_out) + 10, (bleu(base_out), bleu(once), bleu(three))
    with pytest.raises(ValueError, match="feedback_rate moves a plain decoder"):
        model.reconstruct(texts, correction_steps=1, feedback_rate=0.2)
    # the hypotheses were decoded once: a second run reads them from the cache
    capsys.readouterr()
    again = [str(tmp / "corr2") if a == str(tmp / "corr") else "1" if a == "200" else a for a in corrector]
    assert train_script.main(again) == 0
    assert "hypotheses of the base read from" in capsys.readouterr().out


def test_evaluate_writes_each_step_beside_the_ablations(runs, capsys, monkeypatch):
    import recon.corrector
    tmp, _, _ = runs
    out = tmp / "ev"
    calls, correct = [], recon.corrector.correct
    monkeypatch.setattr(recon.corrector, "correct", lambda *a, **k: calls.append(k.get("start") is not None) or correct(*a, **k))
    assert evaluate_script.main(["--checkpoint", str(tmp / "corr"), "--output-dir", str(out), "--split", "train", "--correction-steps", "1", "--correction-beam", "2",
                                 "--retrieval-pool", "0"]) == 0
    result = json.loads((out / "correction.json").read_text())
    assert set(result["conditions"]) == {"correction", "no feedback", "random target", "reference as hypothesis"}
    kept = result["conditions"]["reference as hypothesis"]["curve"]
    assert [r["step"] for r in kept] == [0, 1] and kept[0]["exact_match"] == 100 and kept[1]["bleu"] <= kept[0]["bleu"]
    curve = result["conditions"]["correction"]["curve"]
    assert [r["step"] for r in curve] == [0, 1] and curve[1]["bleu"] > curve[0]["bleu"]
    assert result["conditions"]["random target"]["curve"][1]["bleu"] < curve[1]["bleu"]
    assert (out / "correction.png").stat().st_size > 0 and "| no feedback | 1 |" in (out / "correction.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decoding"]["correction_steps"] == 1 and metrics["decoding"]["correction_beam"] == 2
    assert metrics["bleu"] == pytest.approx(curve[1]["bleu"])  # the headline is the last step's
    # paired tests of the last step against the base's pass and against no feedback, on the same sentences
    tests = result["tests"]
    assert set(tests) == {"the base's single pass", "no feedback"}
    base = tests["the base's single pass"]["bleu"]
    assert (base["a"], base["b"]) == pytest.approx((curve[1]["bleu"], curve[0]["bleu"]))
    blind = tests["no feedback"]["cosine_standardized"]
    assert blind["b"] == pytest.approx(result["conditions"]["no feedback"]["curve"][1]["cosine_standardized"], abs=1e-6)
    assert "- against no feedback: " in (out / "correction.md").read_text()
    # each condition's rows carry their cosines, which recon.significance reads back for pooled tests
    rows_cos = result["conditions"]["no feedback"]["cosine_standardized"]
    assert len(rows_cos) == result["num_examples"] and sum(rows_cos) / len(rows_cos) == pytest.approx(blind["b"], abs=1e-6)
    from recon.significance import load_system
    assert load_system(f"{out}@no feedback")[2]["cosine_standardized"] == rows_cos
    # the four conditions alone: the reconstruction and the random control are the correction's and
    # the random target's own outputs, and the shuffled control is the reconstruction permuted
    assert len(calls) == 4 and sum(calls) == 1
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    preds = result["conditions"]["correction"]["predictions"]
    assert [r["prediction"] for r in rows] == preds
    assert [r["control_random_prediction"] for r in rows] == result["conditions"]["random target"]["predictions"]
    model = ReconModel.from_pretrained(str(tmp / "corr"))
    texts = [r["reference"] for r in rows]
    order = derangement(len(texts), 0)
    shuffled = model.generate_from_vectors(model.encode(texts)[order], correction_steps=1, correction_beam=2)
    assert [r["control_shuffled_prediction"] for r in rows] == shuffled == [preds[i] for i in order.tolist()]
    # fewer ablations: the random control is then decoded by the evaluation itself
    calls.clear()
    assert evaluate_script.main(["--checkpoint", str(tmp / "corr"), "--output-dir", str(tmp / "ev1"), "--split", "train",
                                 "--correction-steps", "1", "--retrieval-pool", "0", "--correction-ablations", "reference",
                                 "--encoder-precision", "fp32", "--generation-precision", "bf16"]) == 0
    fewer = json.loads((tmp / "ev1" / "correction.json").read_text())
    assert list(fewer["conditions"]) == ["correction", "reference as hypothesis"] and len(calls) == 3
    assert list(fewer["tests"]) == ["the base's single pass"]
    assert "| no feedback |" not in (tmp / "ev1" / "correction.md").read_text()
    ev1 = json.loads((tmp / "ev1" / "metrics.json").read_text())
    assert ev1["control_random_bleu"] >= 0 and ev1["encoder_precision"] == "fp32"  # as --encoder-precision said
    assert ev1["generation_precision"] == "bf16"  # and --generation-precision, for the base and the corrector
    assert evaluate_script.main(["--checkpoint", str(tmp / "corr"), "--output-dir", str(tmp / "ev3"),
                                 "--correction-ablations", "no-feedback,shuffle"]) == 2
    assert "--correction-ablations must name some of no-feedback, random-target, reference" in capsys.readouterr().err
    # a sequence beam with no steps on a plain checkpoint is refused, with what to do; so is a feedback rate
    # for a corrector (vector feedback on a plain checkpoint: tests/test_feedback.py)
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(tmp / "ev2"),
                                 "--correction-beam", "2"]) == 2
    assert "--correction-steps N" in capsys.readouterr().err
    assert evaluate_script.main(["--checkpoint", str(tmp / "corr"), "--output-dir", str(tmp / "ev2"),
                                 "--correction-steps", "1", "--feedback-rate", "0.2"]) == 2
    assert "--feedback-rate is for vector feedback on a plain checkpoint" in capsys.readouterr().err


def test_evaluate_with_beams_starts_every_loop_from_them_and_scores_the_greedy_pass_beside(runs, monkeypatch):
    import recon.corrector
    tmp, _, _ = runs
    out = tmp / "ev_beams"
    calls, correct = [], recon.corrector.correct
    monkeypatch.setattr(recon.corrector, "correct", lambda *a, **k: calls.append(k.get("num_beams")) or correct(*a, **k))
    assert evaluate_script.main(["--checkpoint", str(tmp / "corr"), "--output-dir", str(out), "--split", "train",
                                 "--num-beams", "3", "--feedback-steps", "1", "--feedback-beam", "2",
                                 "--correction-steps", "1", "--correction-beam", "2", "--retrieval-pool", "0",
                                 "--correction-ablations", "no-feedback,random-target"]) == 0
    result = json.loads((out / "correction.json").read_text())
    # every loop started from 3 beams, and the evaluation took its outputs rather than decoding them again
    assert calls == [3, 3, 3] and result["num_beams"] == 3
    model = ReconModel.from_pretrained(str(tmp / "corr"))
    texts = sentences(16)
    vectors = model.encode(texts)
    curve = result["conditions"]["correction"]["curve"]
    first = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in first] == result["conditions"]["correction"]["predictions"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bleu"] == pytest.approx(curve[-1]["bleu"])
    # step 0 is the closest of the base's 3 beams: the rerank's choice
    ban = dict(no_repeat_ngram=metrics["decoding"]["no_repeat_ngram"])
    reranked = model.base.rerank_beams(vectors, num_beams=3, **ban)[0]
    truth = [r["reference"] for r in first]
    assert curve[0]["bleu"] == pytest.approx(corpus_scores(reranked, truth)["bleu"])
    # the base's greedy pass beside it, in the table and in a paired test against the last step
    greedy = corpus_scores(model.base.generate_from_vectors(vectors, **ban), truth)
    assert result["greedy"]["bleu"] == pytest.approx(greedy["bleu"])
    assert result["tests"]["the base's greedy pass"]["bleu"]["b"] == pytest.approx(greedy["bleu"])
    table = (out / "correction.md").read_text()
    assert "| the base's greedy pass | 0 |" in table and "first pass of 3 beams, every beam a candidate" in table


def test_a_corrector_for_a_fine_tuned_base_re_encodes_with_the_bases_trained_encoder(runs):
    from safetensors.torch import load_file
    tmp, base, corrector = runs
    ft = [a if a != str(tmp / "base") else str(tmp / "ft") for a in base] + ["--finetune-encoder", "--encoder-lr", "1e-3"]
    assert train_script.main(ft) == 0
    run = [a if a != str(tmp / "base") else str(tmp / "ft") for a in corrector]
    assert train_script.main([a if a != str(tmp / "corr") else str(tmp / "ft-corr") for a in run]) == 0
    model = ReconModel.from_pretrained(str(tmp / "ft-corr"))
    saved = load_file(str(tmp / "ft" / "checkpoint-40" / "model.safetensors"))
    trained = {k[len("encoder."):]: v for k, v in saved.items() if k.startswith("encoder.")}
    assert trained, "the fine-tuned base saves its encoder"
    pretrained = ReconModel.from_pretrained(str(tmp / "base")).encoder.state_dict()
    own = model.encoder.state_dict()
    assert model.encoder is model.base.encoder and not model.trains_encoder
    # the corrector re-encodes with the base's encoder as the base trained it, and left it as it was
    assert all(torch.equal(own[k], v) for k, v in trained.items())
    assert any(not torch.equal(pretrained[k], v) for k, v in trained.items())
    assert not any(k.startswith("encoder.") for k in load_file(str(tmp / "ft-corr" / "checkpoint-200" / "model.safetensors")))
    texts = sentences(16)
    truth = [t.lower() for t in texts]
    bleu = lambda preds: corpus_scores(preds, truth)["bleu"]  # noqa: E731
    base_out, once = model.base.reconstruct(texts), model.reconstruct(texts, correction_steps=1)
    assert bleu(once) > bleu(base_out) + 10, (bleu(base_out), bleu(once))


def test_a_later_round_starts_from_its_corrector_and_learns_from_its_outputs_too(runs, capsys):
    from safetensors.torch import load_file

    from recon.corrector import correct, hypothesis_rows, round_rows
    tmp, _, corrector = runs
    first = ReconModel.from_pretrained(str(tmp / "corr"))
    texts = sentences(16)
    # the later round's rows: the first corrector's one greedy step from the base's hypotheses, re-encoded
    vectors = first.encode(texts)
    rows, hyps = hypothesis_rows(first.base, first.decoder, vectors, texts, None, 3, print)
    new, outs = round_rows(first, first.decoder, rows, texts, None, 3, print)
    assert outs == correct(first, vectors, 1, no_repeat_ngram=3, no_repeat_match="exact", start=hyps)[0][1]
    said = []  # --max-seconds: no step starts past it (the base pass alone outlasts 1 ns)
    stopped, seconds = correct(first, vectors, 5, start=hyps, max_seconds=1e-9, log=said.append)
    assert stopped == [hyps] and len(seconds) == 1 and said == ["stopped after 0 of 5 steps: --max-seconds 1e-09 reached"]
    assert outs != hyps and torch.equal(new[:, :first.decoder.vector_dim], rows[:, :first.decoder.vector_dim])
    torch.testing.assert_close(new, first.decoder.rows(vectors, first.encode(outs), first.tokenizer.encode(outs)))
    # one step at a vanishing learning rate: the later round starts from the first corrector's weights
    later = [str(tmp / "corr") if a == str(tmp / "base") else str(tmp / "round2") if a == str(tmp / "corr") else a
             for a in corrector]
    capsys.readouterr()
    one_step = {"200": "1", "3e-3": "1e-9"}  # --max-steps, --lr
    assert train_script.main([one_step.get(a, a) for a in later]) == 0
    out = capsys.readouterr().out
    assert "16 outputs of the previous round decoded (noise 0)" in out
    model = ReconModel.from_pretrained(str(tmp / "round2"))
    assert model.config.base_model == str(tmp / "base" / "checkpoint-40")  # it corrects the same base
    meta = json.loads((tmp / "round2" / "checkpoint-1" / "meta.json").read_text())
    assert meta["args"]["previous_round"] == str(tmp / "corr" / "checkpoint-200")
    was, now = (load_file(str(tmp / d / "model.safetensors")) for d in ("corr/checkpoint-200", "round2/checkpoint-1"))
    assert was.keys() == now.keys() and all(torch.allclose(was[k], now[k], atol=1e-6) for k in was)
    base = load_file(str(tmp / "base" / "checkpoint-40" / "model.safetensors"))
    assert not torch.allclose(base["decoder.blocks.0.ln1.bias"], now["decoder.blocks.0.ln1.bias"], atol=1e-3)
    # the training rows: the base's hypotheses and the round's outputs, each text the target of both
    assert "training rows: 16 hypotheses of the base and 16 outputs of the previous round" in out
    assert json.loads((tmp / "round2" / "data.json").read_text())["previous_round_noise"] == 0.0
    assert train_script.main(["--base-model", str(tmp / "base"), "--previous-round", str(tmp / "base"),
                              "--output-dir", str(tmp / "r3")]) == 2
    assert "is not a corrector of" in capsys.readouterr().err
    assert train_script.main([*later, "--corrector-copy", "true", "--output-dir", str(tmp / "r4")]) == 2
    assert "keeps its previous round's ['corrector_copy']" in capsys.readouterr().err


def test_the_rounds_script_prints_each_correctors_loop_from_the_bases_pass(runs):
    import subprocess
    import sys
    tmp, _, _ = runs
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "experiments", "correction_rounds.py"), "train", "1", "2",
                          str(tmp / "corr")], capture_output=True, text=True, check=True).stdout
    rows = [line.split(" | ") for line in out.splitlines()[2:]]
    assert [r[1] for r in rows] == ["0", "1"]
    model = ReconModel.from_pretrained(str(tmp / "corr"))
    texts = sentences(16)
    base_bleu = corpus_scores(model.base.reconstruct(texts, no_repeat_ngram=3), texts)["bleu"]
    assert float(rows[0][2]) == pytest.approx(base_bleu, abs=0.01) and float(rows[1][2]) > float(rows[0][2])


def test_corrector_flags_that_cannot_work_are_refused(runs, capsys):
    tmp, base, corrector = runs
    assert train_script.main([*corrector, "--d-model", "32"]) == 2
    assert "are the base run's; drop ['d_model']" in capsys.readouterr().err
    assert train_script.main(["--decoder-type", "corrector"]) == 2
    assert "give --base-model" in capsys.readouterr().err
    assert train_script.main(["--previous-round", str(tmp / "corr"), "--output-dir", str(tmp / "c3")]) == 2
    assert "give --base-model that corrector run instead" in capsys.readouterr().err
    for bad in ("-0.5", "loud"):
        assert train_script.main([*corrector, "--hypothesis-noise", bad]) == 2
        assert "--hypothesis-noise must be auto or a std of 0 or more" in capsys.readouterr().err
    assert train_script.main([*corrector, "--hypothesis-mix", "1.5"]) == 2
    assert "--hypothesis-mix must be a share in [0, 1]" in capsys.readouterr().err
    # auto matches the validation split's hypotheses; this base has none
    auto = [a for a in corrector if a not in ("--hypothesis-noise", "0")]
    assert train_script.main([*auto, "--output-dir", str(tmp / "c4")]) == 2
    assert "--hypothesis-noise auto matches the validation split" in capsys.readouterr().err


def test_the_copy_pointer_puts_its_mass_on_the_hypothesis_tokens():
    torch.manual_seed(0)
    dec = Corrector(DecoderSpec(decoder_type="corrector", d_model=32, n_layer=1, n_head=2, max_target_len=8,
                                corrector_copy=True), 16, 40).eval()
    with torch.no_grad():
        dec.copy["gate"].bias.fill_(-30.0)  # copy alone
        rows = dec.rows(torch.randn(2, 16), torch.randn(2, 16), [[5, 6, 7], []])
        logp = dec(rows, torch.tensor([[2, 5], [2, 9]]))  # (B, T, V)
    probs = logp.exp()
    assert probs[0, :, [5, 6, 7]].sum(-1).allclose(torch.ones(2), atol=1e-4)  # every output on the hypothesis
    assert probs[1].sum() < 1e-3  # no hypothesis, nothing to copy (the gate gives the vocabulary nothing either)
    dec.copy["gate"].bias.data.fill_(30.0)  # the vocabulary alone: a distribution over all of it
    with torch.no_grad():
        assert dec(rows, torch.tensor([[2, 5], [2, 9]])).exp().sum(-1).allclose(torch.ones(2, 2), atol=1e-4)


def test_aligned_init_gives_hypothesis_token_j_the_position_that_writes_it():
    from recon.decoder import Decoder
    spec = dict(d_model=32, n_layer=1, n_head=2, max_target_len=12, num_prefix=3)
    base = Decoder(DecoderSpec(**spec), 16, 40)
    own = Corrector(DecoderSpec(decoder_type="corrector", **spec), 16, 40)
    aligned = Corrector(DecoderSpec(decoder_type="corrector", corrector_init="aligned", **spec), 16, 40)
    for c in (own, aligned):
        warm_start(c, base)
    torch.testing.assert_close(aligned.hyp_pos.weight, base.pos_emb.weight[3:15])  # [BOS] at 3 writes token 0
    assert not torch.allclose(own.hyp_pos.weight, base.pos_emb.weight[3:15])
    assert aligned.hyp_gate is None and torch.equal(aligned.prefix.weight, base.prefix.weight)
    with pytest.raises(Exception, match="zero, one or aligned"):
        DecoderSpec(corrector_init="copy")


def test_hypothesis_mix_replaces_a_share_of_rows_with_corrupted_copies_of_their_texts():
    import random
    rng, words = random.Random(0), ["x"]
    assert corrupt("a b c d", 0, words, rng) == "a b c d"
    many = [corrupt(" ".join("abcdefghij"), 0.3, words, rng) for _ in range(300)]
    changed = [m for m in many if m != " ".join("abcdefghij")]
    assert 0.8 < len(changed) / len(many) < 1  # 10 words at 0.3: 97% have a change
    assert any("x" in m for m in many) and any(len(m.split()) < 10 for m in many) and any("b a" in m or "c b" in m for m in many)

    class Base:  # encodes a text to its word count, tokenises to word lengths
        tokenizer = type("T", (), {"encode": staticmethod(lambda xs: [[len(w) for w in x.split()] for x in xs])})()

        def encode(self, xs, batch_size=None):
            return torch.tensor([[float(len(x.split()))] * 4 for x in xs])

    dec = Corrector(DecoderSpec(decoder_type="corrector", d_model=16, n_layer=1, n_head=2, max_target_len=8), 4, 40)
    texts = [f"text {i} has five words" for i in range(100)]
    rows = dec.rows(torch.zeros(100, 4), torch.full((100, 4), -9.0), [[7]] * 100)
    lines = []
    mixed = mixed_rows(Base(), dec, rows, texts, 0.25, 0.5, lines.append, seed=0)
    changed = (mixed != rows).any(1)
    assert changed.sum().item() == 25 and "25 training rows" in lines[0]
    assert torch.equal(mixed[:, :4], rows[:, :4])  # the targets stay
    assert (mixed[changed, 4:8] > 0).all()  # the corrupted copies' own vectors
    assert torch.equal(mixed_rows(Base(), dec, rows, texts, 0.25, 0.5, lines.append, seed=0), mixed)
    assert mixed_rows(Base(), dec, rows, texts, 0, 0.5, lines.append) is rows


class FakeBase:
    """Writes its sentence when the vector is within 1 of the clean one (zeros), else a wrong one."""

    def __init__(self, texts):
        self.texts, self.decoder = texts, type("D", (), {"vector_std": torch.full((8,), 0.5)})()

    def generate_from_vectors(self, vectors, **kw):
        return [t if v.abs().max() < 1 else "nothing of the kind" for t, v in zip(self.texts, vectors)]


def test_noise_is_in_standardised_units_and_the_same_every_time():
    base, v = FakeBase([]), torch.zeros(1000, 8)
    a, b = noised_vectors(base, v, 0.4), noised_vectors(base, v, 0.4)
    assert torch.equal(a, b) and noised_vectors(base, v, 0) is v
    assert a.std().item() == pytest.approx(0.4 * 0.5, rel=0.05)  # 0.4 of the base's std of 0.5


def test_auto_noise_is_the_grid_std_whose_token_f1_is_nearest_the_validation_splits():
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(512)]
    base, lines = FakeBase(texts), []
    f1 = {}
    for noise in NOISE_GRID:  # what each std gives (the fake's outputs depend on the draw alone)
        f1[noise] = corpus_scores(base.generate_from_vectors(noised_vectors(base, torch.zeros(512, 8), noise)), texts)["token_f1"]
    assert f1[0] == 100 and f1[2.0] < f1[1.0] < f1[0.5]
    chosen = calibrate_noise(base, torch.zeros(512, 8), texts, f1[1.0] + 0.1, 0, lines.append)
    assert chosen == 1.0
    assert len(lines) == NOISE_GRID.index(1.0) + 1  # it stops at the first F1 below the target
    assert calibrate_noise(base, torch.zeros(512, 8), texts, 100.0, 0, lines.append) == 0.0


def test_a_plain_run_recorded_before_the_corrector_flags_resumes_and_an_old_corrector_is_read_as_trained():
    from dataclasses import asdict

    from recon.config import TrainConfig
    recorded = {k: v for k, v in asdict(TrainConfig()).items() if k not in ("hypothesis_noise", "corrector_init")}
    assert TrainConfig().changed_from(recorded) == []  # only a corrector reads them
    # a corrector recorded before --hypothesis-noise was trained on clean hypotheses: resuming it with auto differs
    old = TrainConfig(base_model="some-run")
    assert "hypothesis_noise" in old.changed_from({**recorded, "base_model": "some-run"})
    assert "hypothesis_noise" not in TrainConfig(base_model="some-run", hypothesis_noise="0").changed_from(
        {**recorded, "base_model": "some-run"})


def test_hypothesis_copies_add_the_bases_substitute_copies_to_the_rows(tiny_encoder_dir, tmp_path):
    import random
    rng = random.Random(0)
    words = sorted({"".join(rng.choice("bcdfghklmnprst") + rng.choice("aeiou") for _ in range(3)) for _ in range(200)})
    # words rare enough to be swapped, between the same neighbours: the substitute copies have some to swap
    texts = [f"The {rng.choice(words)} stood near {rng.choice(words)} with {rng.choice(words)} today." for _ in range(100)]
    (tmp_path / "data.txt").write_text("\n".join(texts) + "\n")
    common = ["--cache-dir", str(tmp_path / "cache"), "--batch-size", "16", "--no-eval"]
    assert train_script.main(["--encoder", tiny_encoder_dir, "--data", str(tmp_path / "data.txt"), "--output-dir",
                              str(tmp_path / "base"), "--d-model", "32", "--n-layer", "1", "--n-head", "2",
                              "--vocab-size", "400", "--decoder-tokenizer", "encoder", "--validation-fraction", "0",
                              "--test-fraction", "0", "--max-steps", "2", *common]) == 0
    copies = json.loads((tmp_path / "base" / "data.json").read_text())["training_substitute_copies"]
    assert copies > 0  # the base trained on copies of its sentences (--substitute-copies 1, the default)
    for name, flag in (("plain", []), ("copies", ["--hypothesis-copies", "true"])):
        assert train_script.main(["--base-model", str(tmp_path / "base"), "--output-dir", str(tmp_path / name),
                                  "--max-steps", "1", "--hypotheses", "0", "--hypothesis-noise", "0", *common, *flag]) == 0
    rows = lambda name: json.loads((tmp_path / name / "data.json").read_text())["hypothesis_texts"]  # noqa: E731
    assert rows("plain") == 100 and rows("copies") == 100 + copies


def test_vector_feedback_on_the_base_first_then_the_corrector_on_all_it_kept(runs, capsys):
    from recon.corrector import correct
    from recon.feedback import feedback_loop
    tmp, _, _ = runs
    model = ReconModel.from_pretrained(str(tmp / "corr"))
    vectors = model.encode(sentences(16))
    outputs, seconds = correct(model, vectors, 2, beam=2, feedback_steps=2, rate=0.2)
    feedback, _ = feedback_loop(model.base, vectors, 2, beam=2, rate=0.2)
    assert len(outputs) == len(seconds) == 5 and outputs[:3] == feedback  # the feedback's steps, then the corrector's
    z = model.decoder.standardize(vectors)
    curve = [torch.nn.functional.cosine_similarity(model.decoder.standardize(model.encode(o)), z, dim=-1) for o in outputs]
    for before, after in zip(curve, curve[1:]):  # both loops keep the closest candidates: no sentence gets worse
        assert (after >= before - 1e-5).all()
    assert model.generate_from_vectors(vectors, correction_steps=2, correction_beam=2, feedback_steps=2,
                                       feedback_rate=0.2) == outputs[-1]
    wide, _ = correct(model, vectors, 1, beam=1, feedback_steps=2, rate=0.2, feedback_beam=3)  # 3 kept, 1 corrected
    assert wide[:3] == feedback_loop(model.base, vectors, 2, beam=3, rate=0.2)[0]
    with pytest.raises(ValueError, match="on a corrector's base first"):
        model.base.generate_from_vectors(vectors, feedback_steps=1)
    out = tmp / "ev-fb"
    assert evaluate_script.main(["--checkpoint", str(tmp / "corr"), "--output-dir", str(out), "--split", "train",
                                 "--correction-steps", "1", "--correction-beam", "2", "--feedback-steps", "2",
                                 "--retrieval-pool", "0", "--correction-ablations", "no-feedback"]) == 0
    result = json.loads((out / "correction.json").read_text())
    assert result["feedback_steps"] == 2 and result["rate"] == 0.15
    for name in ("correction", "no feedback"):
        assert [r["step"] for r in result["conditions"][name]["curve"]] == [0, 1, 2, 3]
    assert "2 steps of vector feedback on the base (rate 0.15, 2 beams), then 1 steps of the corrector" in (out / "correction.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decoding"]["feedback_steps"] == 2 and metrics["decoding"]["feedback_rate"] == 0.15
    assert metrics["bleu"] == pytest.approx(result["conditions"]["correction"]["curve"][-1]["bleu"])
    assert "vector feedback on the base" in (out / "report.md").read_text()
    capsys.readouterr()
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(tmp / "ev-fb2"),
                                 "--correction-steps", "1", "--feedback-steps", "2"]) == 2
    assert "is not a corrector: --feedback-steps" in capsys.readouterr().err


def test_correction_rate_moves_the_corrector_target_slot_by_the_residual_of_its_closest_new_candidate(runs, capsys,
                                                                                                      monkeypatch):
    from recon.corrector import closest, correct
    tmp, _, _ = runs
    model = ReconModel.from_pretrained(str(tmp / "corr"))
    model.base.encoder.precision = "fp32"  # re-encoding a text in another batch gives the same vector
    dec = model.decoder
    vectors = model.encode(sentences(12, seed=5))  # not the training sentences: those it may rebuild exactly (no residual)
    slots, decoded = [], []
    rows, decode_rows = dec.rows, model.decode_rows

    def spy_rows(target, hv, ids):
        slots.append(target.clone())
        return rows(target, hv, ids)

    def spy_decode(r, **kw):
        out = decode_rows(r, **kw)
        decoded.append(out[1] if kw.get("return_all") else out)
        return out
    monkeypatch.setattr(dec, "rows", spy_rows)
    monkeypatch.setattr(model, "decode_rows", spy_decode)
    outputs, _ = correct(model, vectors, 2, beam=2, correction_rate=0.5)
    assert len(slots) == 2 and torch.equal(slots[0], vectors.cpu())  # step 1: the base's pass, one a sentence
    fresh = [[t for t, _ in row] for row in decoded[0]]  # step 1's new candidates
    best = [p[0] for p in closest(dec, [list(dict.fromkeys(f)) for f in fresh], model.base.encode,
                                  dec.standardize(vectors).cpu(), 1)]
    moved = vectors.cpu() + 0.5 * (vectors.cpu() - model.base.encode(best).cpu())  # (N, D)
    gap, owner = torch.cdist(slots[1].float(), moved.float()).min(dim=1)  # step 2: a row per kept candidate
    assert gap.max() < 1e-4 and owner.tolist() == sorted(owner.tolist()) and set(owner.tolist()) == set(range(12))
    z = dec.standardize(vectors)
    curve = [torch.nn.functional.cosine_similarity(dec.standardize(model.encode(o)), z, dim=-1) for o in outputs]
    assert (curve[2] >= curve[1] - 1e-5).all()  # the sequence beam still keeps the closest candidates
    monkeypatch.undo()
    # the ablation moves by another sentence's residual: not each sentence's own
    slots.clear()
    monkeypatch.setattr(dec, "rows", spy_rows)
    correct(model, vectors, 2, beam=1, correction_rate=0.5, feedback=False)
    assert not torch.allclose(slots[1], slots[0])
    monkeypatch.undo()
    assert model.generate_from_vectors(vectors, correction_steps=2, correction_beam=2, correction_rate=0.5) == outputs[-1]
    with pytest.raises(ValueError, match="moves a corrector's target slot"):
        model.base.generate_from_vectors(vectors, correction_steps=1, correction_rate=0.5)
    out = tmp / "ev-rate"
    assert evaluate_script.main(["--checkpoint", str(tmp / "corr"), "--output-dir", str(out), "--split", "train",
                                 "--correction-steps", "2", "--correction-beam", "2", "--correction-rate", "0.5",
                                 "--retrieval-pool", "0", "--correction-ablations", "no-feedback"]) == 0
    result = json.loads((out / "correction.json").read_text())
    assert result["correction_rate"] == 0.5 and "target slot moved by 0.5" in (out / "correction.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decoding"]["correction_rate"] == 0.5
    assert metrics["bleu"] == pytest.approx(result["conditions"]["correction"]["curve"][-1]["bleu"])
    assert "target slot moved by 0.5" in (out / "report.md").read_text()
    capsys.readouterr()
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(tmp / "ev-rate2"),
                                 "--correction-steps", "1", "--correction-rate", "0.5"]) == 2
    assert "is not a corrector: --correction-rate" in capsys.readouterr().err


def test_the_hypotheses_key_names_the_precisions_that_changed_them():
    def base(encoded, generated, device="cpu"):
        return SimpleNamespace(encoder=SimpleNamespace(resolved_precision=lambda: encoded), device=torch.device(device),
                               resolved_generation_precision=lambda: generated)
    assert _precision_key(base("fp32", "fp32")) == ""  # the key such rows always had on a CPU
    assert _precision_key(base("bf16", "fp32")) == "|bf16"
    assert _precision_key(base("fp32", "bf16")) == "|generated-bf16"
    assert _precision_key(base("bf16", "bf16", "cuda")) == "|bf16"  # CUDA always generated in bf16
    assert _precision_key(base("bf16", "fp32", "cuda")) == "|bf16|generated-fp32"


def test_a_corrector_run_trains_its_companions_and_its_checkpoint_pools_them(runs, capsys, monkeypatch):
    import recon.feedback
    tmp, base, corrector = runs
    run = [a if a != str(tmp / "corr") else str(tmp / "corr-comp") for a in corrector]
    run[run.index("--max-steps") + 1] = "20"
    assert train_script.main(run + ["--companions", "1"]) == 0
    companion = tmp / "corr-comp" / "companion-seed1"  # the base's flags (seed 0) at the next seed
    assert (companion / "checkpoint-40").is_dir() and "companion decoder 1 of 1" in capsys.readouterr().out
    config = json.loads((tmp / "corr-comp" / "checkpoint-20" / "config.json").read_text())
    assert config["companions"] == [str(companion)]
    args = json.loads((companion / "checkpoint-40" / "meta.json").read_text())["args"]
    base_args = json.loads((tmp / "base" / "checkpoint-40" / "meta.json").read_text())["args"]
    assert args["seed"] == 1 and args["no_eval"] and args["d_model"] == base_args["d_model"] == 64
    model = ReconModel.from_pretrained(str(tmp / "corr-comp"))
    assert [c.folder for c in model.companions] == [str(companion / "checkpoint-40")]
    other = ReconModel.from_pretrained(str(companion))
    vectors = model.encode(sentences(16))
    assert not torch.equal(other.decoder.prefix.weight, model.base.decoder.prefix.weight)  # another decoder
    # its feedback joins the base's before the corrector
    pools, pooled = [], recon.feedback.pooled_feedback
    monkeypatch.setattr(recon.feedback, "pooled_feedback", lambda models, *a, **k: pools.append(models) or pooled(models, *a, **k))
    model.generate_from_vectors(vectors, correction_steps=1, correction_beam=2, feedback_steps=2, feedback_beam=2)
    assert pools == [[model.base, model.companions[0]]]
    # resumed, the finished companion is kept; a plain run cannot ask for companions
    stamp = (companion / "checkpoint-40" / "model.safetensors").stat().st_mtime
    assert train_script.main(run + ["--companions", "1", "--resume", "auto"]) == 0
    assert (companion / "checkpoint-40" / "model.safetensors").stat().st_mtime == stamp
    assert "companion decoder" not in capsys.readouterr().out
    assert train_script.main(base[:base.index("--output-dir")] + ["--output-dir", str(tmp / "plain"), "--companions", "1"]) == 2
    assert "--companions trains more decoders for a corrector run" in capsys.readouterr().err
