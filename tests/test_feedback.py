"""Vector feedback (recon/feedback.py): a plain decoder corrected through its input, run by
ReconModel.generate_from_vectors(correction_steps=N) and evaluate.py --correction-steps on a plain checkpoint."""

import json
import math

import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from conftest import sentences
from recon import ReconModel
from recon.corrector import correct
from recon.evaluation import matched_random_vectors
from recon.feedback import feedback_loop, pooled_feedback
from recon.model import CheckpointError


class Rotating:
    """A stand-in model whose decoder is right up to a rotation: the text it writes for v re-encodes to
    R v (R turns by 40 degrees), so every single pass misses its target by the same angle, and only
    the input R^-1 v* writes a text that re-encodes to v*. Texts are the vectors, printed."""

    def __init__(self, degrees=40.0):
        a = math.radians(degrees)
        self.rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.decoder, self.base = self, None  # standardize() lives on the decoder: here, the identity; no corrector
        self.companions = []  # no other decoders of the same vectors

    def standardize(self, v):
        return torch.as_tensor(v).float()

    def encode(self, texts, batch_size=256):
        return torch.tensor([[float(x) for x in t.split()] for t in texts])

    def _write(self, v):
        return [f"{x:.4f} {y:.4f}" for x, y in (torch.as_tensor(v).float() @ self.rotation.T).tolist()]

    def generate_from_vectors(self, v, num_beams=1, **gen):
        return self._write(v)

    def decode_rows(self, v, num_beams=1, return_all=False, **gen):
        best = self._write(v)
        if not return_all:
            return best
        # K beams: the text, and K-1 others written from nearby inputs
        shifts = [torch.tensor([0.02 * k, -0.01 * k]) for k in range(num_beams)]
        rows = [[(t, 0.0) for t in self._write(torch.as_tensor(v).float() + s)] for s in shifts]
        return best, [list(r) for r in zip(*rows)]


class Sided(Rotating):
    """Right where the vector's first coordinate is positive, turned elsewhere."""

    def _write(self, v):
        v = torch.as_tensor(v).float()
        v = torch.where(v[:, :1] > 0, v, v @ self.rotation.T)
        return [f"{x:.4f} {y:.4f}" for x, y in v.tolist()]


def cosines(model, texts, target):
    return torch.nn.functional.cosine_similarity(model.encode(texts), target, dim=-1)


@pytest.mark.parametrize("beam", [1, 3])
def test_feedback_finds_the_input_whose_output_re_encodes_to_the_target(beam):
    model = Rotating()
    g = torch.Generator().manual_seed(0)
    target = torch.randn(32, 2, generator=g)
    outputs, seconds = feedback_loop(model, target, 25, beam=beam, rate=0.3)
    assert len(outputs) == len(seconds) == 26
    assert outputs[0] == model.generate_from_vectors(target)  # step 0 is the single pass
    start = cosines(model, outputs[0], target)
    assert torch.allclose(start, torch.full_like(start, math.cos(math.radians(40))), atol=1e-3)
    curve = [cosines(model, out, target) for out in outputs]
    for before, after in zip(curve, curve[1:]):  # the closest candidate is kept: no sentence ever gets worse
        assert (after >= before - 1e-6).all()
    assert curve[-1].min() > 0.999, curve[-1].min()  # the fixed point R^-1 v* is found, for every sentence
    # another sentence's residual: the same number of moved vectors decoded and kept the same way
    blind, _ = feedback_loop(model, target, 25, beam=beam, rate=0.3, feedback=False, seed=1)
    assert cosines(model, blind[-1], target).mean() < curve[-1].mean() - 0.02
    # correct() runs this loop for a model with no corrector, and passes the rate on
    same, _ = correct(model, target, 25, beam, rate=0.3)
    assert same == outputs
    # return_kept: each sentence's kept candidates, closest first, their first the written output
    _, _, kept = feedback_loop(model, target, 25, beam=beam, rate=0.3, return_kept=True)
    assert [row[0][1] for row in kept] == outputs[-1]
    for row, t in zip(kept, target):
        assert 1 <= len(row) <= beam and len({h for _, h in row}) == len(row)
        sims = [c for c, _ in row]
        assert sims == sorted(sims, reverse=True)
        assert torch.allclose(cosines(model, [h for _, h in row], t[None]), torch.tensor(sims), atol=1e-4)
    with pytest.raises(ValueError, match="above 0"):
        feedback_loop(model, target, 1, rate=0.0)


def test_feedback_keeps_every_beam_of_a_wide_first_pass():
    model = Rotating()
    target = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    beams = [[h for h, _ in row] for row in model.decode_rows(target, num_beams=4, return_all=True)[1]]
    outputs, _, kept = feedback_loop(model, target, 0, beam=4, rate=0.3, num_beams=4, return_kept=True)
    for row, first in zip(kept, beams):  # every beam is a candidate, closest first
        assert sorted(h for _, h in row) == sorted(first)
    closest = [max(row, key=lambda h: float(cosines(model, [h], t[None])[0])) for row, t in zip(beams, target)]
    assert outputs[0] == closest  # the first pass writes the rerank's choice, and its trajectory starts there
    wide, _ = feedback_loop(model, target, 3, beam=4, rate=0.3, num_beams=4)
    assert feedback_loop(model, target, 3, beam=4, rate=0.3, start=beams)[0] == wide  # start: lists of texts
    narrow, _ = feedback_loop(model, target, 3, beam=4, rate=0.3)
    assert wide != narrow and wide[0] != narrow[0]
    assert (cosines(model, wide[-1], target) >= cosines(model, wide[0], target) - 1e-6).all()


def test_feedback_encodes_each_text_once():
    """A candidate written again, at a later step or for another sentence, keeps the vector it was
    re-encoded to: the loop encodes every distinct text once, and writes what it would without that."""
    model = Rotating()
    target = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    target[8:] = target[:8]  # two sentences a vector: every candidate written twice at each step
    encoded, encode = [], model.encode
    model.encode = lambda texts, batch_size=256: encoded.extend(texts) or encode(texts, batch_size)
    outputs, _ = feedback_loop(model, target, 6, beam=3, rate=0.3, num_beams=3)
    assert len(encoded) == len(set(encoded)) and outputs[-1][8:] == outputs[-1][:8]
    assert len(encoded) <= 16 * 3 * 7 // 2  # at most half of the 3 candidates a sentence a pass (7 passes)
    model.encode = encode
    assert feedback_loop(model, target, 6, beam=3, rate=0.3, num_beams=3)[0] == outputs


def test_pooled_feedback_writes_the_closest_of_every_decoders_loop():
    """Two decoders of the same vectors, wrong in different ways (one turns every vector by 40 degrees,
    the other is right on one half-plane and 60 degrees off on the other), each run
    their own loop; every step each sentence writes whichever loop's output re-encodes closer to its target,
    and correct() pools a model's companions so."""
    first, second = Rotating(40.0), Sided(-60.0)
    target = torch.randn(24, 2, generator=torch.Generator().manual_seed(3))
    loops = [feedback_loop(m, target, 2, beam=2, rate=0.1, num_beams=2, return_kept=True) for m in (first, second)]
    pooled, seconds, kept = pooled_feedback([first, second], target, 2, beam=2, rate=0.1, num_beams=2,
                                            return_kept=True)
    assert len(pooled) == len(seconds) == 3
    for step, out in enumerate(pooled):
        mine, theirs = loops[0][0][step], loops[1][0][step]
        better = [a if ca >= cb else b for a, b, ca, cb in
                  zip(mine, theirs, cosines(first, mine, target), cosines(first, theirs, target))]
        assert out == better
        assert (cosines(first, out, target) >= cosines(first, mine, target) - 1e-6).all()
    for step in (0, 2):  # each decoder writes some of the sentences
        assert pooled[step] != loops[0][0][step] and pooled[step] != loops[1][0][step]
    for row, a, b, t in zip(kept, loops[0][2], loops[1][2], target):  # every candidate either kept, closest first
        assert {h for _, h in row} == {h for _, h in a} | {h for _, h in b}
        assert [c for c, _ in row] == sorted((c for c, _ in row), reverse=True) and row[0][1] in (a[0][1], b[0][1])
    first.companions = [second]
    assert correct(first, target, 2, 2, rate=0.1, num_beams=2)[0] == pooled


def tiny_run(encoder_dir, tmp, out, *extra):
    """train.py's flags for a tiny run on tmp/data.txt (a 1-layer decoder, 30 steps), then `extra`."""
    return ["--encoder", encoder_dir, "--data", str(tmp / "data.txt"), "--output-dir", str(out), "--d-model", "32",
            "--n-layer", "1", "--n-head", "2", "--decoder-tokenizer", "encoder", "--validation-fraction", "0",
            "--max-steps", "30", "--batch-size", "8", "--dropout", "0", "--cache-dir", str(tmp / "cache"),
            "--eval-steps", "1000", *extra]


@pytest.fixture(scope="module")
def base_run(tiny_encoder_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feedback")
    (tmp / "data.txt").write_text("\n".join(sentences(24)) + "\n")
    assert train_script.main(tiny_run(tiny_encoder_dir, tmp, tmp / "base", "--test-fraction", "0", "--no-eval")) == 0
    return tmp


def test_evaluate_runs_vector_feedback_on_a_plain_checkpoint(base_run, capsys):
    tmp = base_run
    out = tmp / "ev"
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(out), "--split", "train",
                                 "--correction-steps", "2", "--correction-beam", "2", "--feedback-rate", "0.3",
                                 "--retrieval-pool", "0"]) == 0
    printed = capsys.readouterr().out
    assert "vector feedback, step by step" in printed and "no 'reference as hypothesis' check" in printed
    result = json.loads((out / "correction.json").read_text())
    assert result["loop"] == "vector feedback" and result["rate"] == 0.3
    assert list(result["conditions"]) == ["correction", "no feedback", "random target"]
    curve = result["conditions"]["correction"]["curve"]
    assert [r["step"] for r in curve] == [0, 1, 2]
    cos = [r["cosine_standardized"] for r in curve]
    assert cos[0] <= cos[1] <= cos[2]  # the closest candidate so far is kept
    assert "Vector feedback on 24 texts: 2 steps of rate 0.3" in (out / "correction.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decoding"]["feedback_rate"] == 0.3 and metrics["decoding"]["correction_steps"] == 2
    assert "2 steps of vector feedback" in (out / "report.md").read_text()
    # the headline's reconstructions are the loop's, and the Python call writes the same
    model = ReconModel.from_pretrained(str(tmp / "base"))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    texts = [r["reference"] for r in rows]
    again = model.generate_from_vectors(model.encode(texts), correction_steps=2, correction_beam=2, feedback_rate=0.3,
                                        no_repeat_ngram=3)
    assert [r["prediction"] for r in rows] == result["conditions"]["correction"]["predictions"] == again
    # bad settings: clear errors, nothing run
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(tmp / "ev2"),
                                 "--correction-steps", "1", "--feedback-rate", "0"]) == 2
    assert "--feedback-rate must be above 0" in capsys.readouterr().err
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(tmp / "ev2"),
                                 "--correction-steps", "1", "--rerank", "embedding", "--num-beams", "2"]) == 2
    assert "drop --rerank" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not rerank"):
        model.generate_from_vectors(model.encode(texts[:2]), correction_steps=1, rerank="embedding", num_beams=2)


def test_train_ends_with_vector_feedback_and_evaluate_decodes_as_it_did(base_run, tiny_encoder_dir, capsys):
    tmp = base_run
    run = tmp / "fed"
    argv = tiny_run(tiny_encoder_dir, tmp, run, "--test-fraction", "0.25", "--num-beams", "2", "--feedback-steps", "2")
    assert train_script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 beams, the one whose re-encoded vector is nearest the target, then 2 steps of vector feedback" in printed
    # each step is logged as it ends, the control's too: the evaluation is not silent for minutes
    assert "the reconstruction, feedback step 2 of 2: " in printed
    assert "the random-vector control, feedback step 2 of 2: " in printed
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["decoding"]["correction_steps"] == 2 and metrics["decoding"]["correction_beam"] == 2
    assert metrics["decoding"]["num_beams"] == 2 and metrics["decoding"]["feedback_rate"] == 0.15
    rows = [json.loads(line) for line in (run / "eval-test" / "predictions.jsonl").read_text().splitlines()]
    model = ReconModel.from_pretrained(str(run))
    texts = [r["reference"] for r in rows]
    again = model.generate_from_vectors(model.encode(texts), num_beams=2, correction_steps=2, correction_beam=2,
                                        no_repeat_ngram=3)
    assert [r["prediction"] for r in rows] == again
    # the random control went through the same loop: decoded so here, it matches
    noise = matched_random_vectors(model.encode(texts), 0)
    assert [r["control_random_prediction"] for r in rows] == model.generate_from_vectors(
        noise, num_beams=2, correction_steps=2, correction_beam=2, no_repeat_ngram=3)
    # evaluate.py with no decoding flags decodes as the run's evaluation did, without the step-by-step report
    out = tmp / "fed-ev"
    assert evaluate_script.main(["--checkpoint", str(run), "--output-dir", str(out), "--retrieval-pool", "0"]) == 0
    assert "then 2 steps of vector feedback, as the run's own evaluation decoded" in capsys.readouterr().out
    assert not (out / "correction.md").exists()
    assert [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()] == again
    # --correction-steps 0: the first pass alone, reranked as the run's beams were
    assert evaluate_script.main(["--checkpoint", str(run), "--output-dir", str(tmp / "fed-ev0"),
                                 "--retrieval-pool", "0", "--correction-steps", "0"]) == 0
    first = json.loads((tmp / "fed-ev0" / "metrics.json").read_text())["decoding"]
    assert first["rerank"] == "embedding" and "correction_steps" not in first
    # a corrector's final evaluation is its own loop: --feedback-steps is refused with what to do instead
    assert train_script.main(["--base-model", str(run), "--output-dir", str(tmp / "corr"), "--feedback-steps", "1"]) == 2
    assert "drop --feedback-steps" in capsys.readouterr().err
    # plain beam search's top beam cannot start a loop that keeps the closest candidates
    assert train_script.main(argv[:-4] + ["--num-beams", "2", "--rerank", "none"]) == 2
    assert "drop --rerank none, or give --feedback-steps 0" in capsys.readouterr().err


def test_evaluate_pools_the_feedback_of_companion_decoders(base_run, tiny_encoder_dir, capsys):
    tmp = base_run
    other = tmp / "base_seed1"
    assert train_script.main(tiny_run(tiny_encoder_dir, tmp, other, "--test-fraction", "0", "--no-eval",
                                      "--seed", "1")) == 0
    out = tmp / "ev_companions"
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(out), "--split", "train",
                                 "--correction-steps", "2", "--correction-beam", "2", "--companions", str(other),
                                 "--retrieval-pool", "0", "--correction-ablations", "none"]) == 0
    result = json.loads((out / "correction.json").read_text())
    assert result["companions"] == [str(other / "checkpoint-30")]
    assert "runs on 2 decoders of the same vectors" in (out / "correction.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decoding"]["companions"] == result["companions"]
    assert "pooled with that of 1 other decoder(s)" in (out / "report.md").read_text()
    # the same as the Python call with the companion added; and not what the base alone writes
    model = ReconModel.from_pretrained(str(tmp / "base"))
    texts = [json.loads(line)["reference"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    vectors = model.encode(texts)
    alone = model.generate_from_vectors(vectors, correction_steps=2, correction_beam=2, no_repeat_ngram=3)
    pooled = model.add_companions([str(other)]).generate_from_vectors(vectors, correction_steps=2, correction_beam=2,
                                                                      no_repeat_ngram=3)
    assert result["conditions"]["correction"]["predictions"] == pooled != alone
    assert model.companions[0].encoder is model.encoder
    cos = lambda preds: float(cosines(model, preds, vectors).mean())  # noqa: E731
    assert cos(pooled) >= cos(alone) - 1e-6  # the closest of a superset of candidates
    # bad settings: clear errors
    assert evaluate_script.main(["--checkpoint", str(tmp / "base"), "--output-dir", str(tmp / "ev3"),
                                 "--correction-steps", "0", "--companions", str(other)]) == 2
    assert "--companions join vector feedback" in capsys.readouterr().err
    # a decoder of another encoder's vectors is refused: here, a run that fine-tuned its encoder
    tuned = tmp / "base_tuned"
    assert train_script.main(tiny_run(tiny_encoder_dir, tmp, tuned, "--test-fraction", "0", "--no-eval",
                                      "--finetune-encoder")) == 0
    with pytest.raises(CheckpointError, match="companions need a frozen encoder"):
        ReconModel.from_pretrained(str(tmp / "base")).add_companions([str(tuned)])


def test_pooled_feedback_names_each_loop_in_its_log():
    said = []
    pooled_feedback([Rotating(40.0), Sided(-60.0)], torch.randn(4, 2), 1, rate=0.1, log=said.append)
    assert [line.split(":")[0] for line in said] == ["decoder 1 of 2, feedback step 1 of 1",
                                                     "decoder 2 of 2, feedback step 1 of 1"]
