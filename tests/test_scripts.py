"""main(argv) smoke tests of train.py and evaluate.py on the tiny encoder."""

import json
import os

import pytest

import evaluate as evaluate_script
import train as train_script
from conftest import sentences
from recon import ReconModel
from recon.config import ConfigError, TrainConfig, parse

TINY = ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--batch-size", "16", "--eval-steps", "5",
        "--eval-batch-size", "64", "--cache-dir", ""]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_encoder_dir):
    tmp = tmp_path_factory.mktemp("run")
    data = tmp / "data.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    out = tmp / "run"
    argv = ["--encoder", tiny_encoder_dir, "--data", str(data), "--output-dir", str(out), "--max-steps", "12",
            "--vocab-size", "400", "--validation-fraction", "0.1", "--test-fraction", "0.1", "--save-steps", "5"] + TINY
    assert train_script.main(argv) == 0
    return tmp, data, out


def test_train_writes_a_loadable_run(trained_run):
    tmp, data, out = trained_run
    names = set(os.listdir(out))
    assert {"checkpoint-10", "checkpoint-12", "metrics.jsonl", "data.json", "eval-test"} <= names
    assert "checkpoint-5" not in names  # save_total_limit 2
    ckpt = out / "checkpoint-12"
    assert {"config.json", "model.safetensors", "decoder_spm.model", "meta.json", "trainer_state.pt"} <= set(os.listdir(ckpt))
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 12 and meta["args"]["max_steps"] == 12 and meta["data"]["corpus_hash"]
    assert meta["val_loss"] is not None
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 12] and "val_loss" in log[-1]  # every 10 steps and every save
    m = json.loads((out / "eval-test" / "metrics.json").read_text())
    for key in ("bleu", "sentence_bleu_mean", "exact_match", "exact_match_normalized", "token_f1", "num_examples",
                "sacrebleu_signature", "decoding", "control_random_bleu", "control_random_exact_match", "by_length"):
        assert key in m
    assert m["num_examples"] == json.loads((out / "data.json").read_text())["test_texts"]
    rows = [json.loads(line) for line in (out / "eval-test" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == m["num_examples"] and {"reference", "prediction", "length", "sentence_bleu"} <= set(rows[0])
    report = (out / "eval-test" / "report.md").read_text()
    assert "control: random vector" in report and "## By length" in report and "worst" in report
    model = ReconModel.from_pretrained(str(out))  # a run folder loads its latest checkpoint
    assert len(model.reconstruct(["The red cat sees the dog near the river."])) == 1
    corpus = model.training_corpus()  # the run's data read and split again, as experiment scripts study it
    assert corpus.stats["corpus_hash"] == json.loads((out / "data.json").read_text())["corpus_hash"]
    assert len(corpus.texts("test")) == m["num_examples"]


def test_evaluate_defaults_to_the_held_out_split(trained_run):
    tmp, data, out = trained_run
    assert evaluate_script.main(["--checkpoint", str(out), "--output-dir", str(tmp / "ev")]) == 0
    m = json.loads((tmp / "ev" / "metrics.json").read_text())
    test = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert m["split"] == "test" and m["num_examples"] == test["num_examples"]
    assert m["bleu"] == pytest.approx(test["bleu"])  # same checkpoint, same split, same numbers
    # decoded as train.py's own evaluation was: 8 beams, then 3 steps of vector feedback keeping 8 candidates (the
    # closest at step 0 is the rerank's choice), the controls so decoded too
    loop = {"num_beams": 8, "rerank": "none", "correction_steps": 3, "correction_beam": 8, "feedback_rate": 0.15}
    assert {k: m["decoding"][k] for k in loop} == {k: test["decoding"][k] for k in loop} == loop
    def outputs(folder):
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        return [(r["prediction"], r["control_random_prediction"], r["control_shuffled_prediction"]) for r in rows]
    assert outputs(tmp / "ev") == outputs(out / "eval-test")


def test_evaluate_repeat_ban_match_is_recorded_and_reported(trained_run, tmp_path):
    tmp, data, out = trained_run
    m = {}
    for match in ("exact", "loose"):
        assert evaluate_script.main(["--checkpoint", str(out), "--output-dir", str(tmp_path / match),
                                     "--no-repeat-match", match]) == 0
        m[match] = json.loads((tmp_path / match / "metrics.json").read_text())
        assert m[match]["decoding"]["no_repeat_match"] == match
    # loose leaves out what is not a word (punctuation, a lone word boundary, bytes): on this tiny
    # vocabulary every reference repeats a 3-gram of token ids, far fewer one of words
    assert m["loose"]["reference_unreachable_no_repeat"] < m["exact"]["reference_unreachable_no_repeat"]
    assert "compared loosely" in (tmp_path / "loose" / "report.md").read_text()
    assert "compared loosely" not in (tmp_path / "exact" / "report.md").read_text()


def test_evaluate_new_file_defaults_to_all_of_it(trained_run, tmp_path):
    tmp, data, out = trained_run
    new = tmp_path / "new.jsonl"
    new.write_text("\n".join(json.dumps({"sentence": s}) for s in sentences(7, seed=9)) + "\n")
    argv = ["--checkpoint", str(out), "--data", str(new), "--text-field", "sentence", "--output-dir",
            str(tmp_path / "ev"), "--num-beams", "2"]
    assert evaluate_script.main(argv) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["split"] == "all" and m["num_examples"] == 7 and m["decoding"]["num_beams"] == 2
    assert not os.path.exists(out / "checkpoint-12" / "metrics.json")  # nothing written into the checkpoint


def test_bad_arguments_exit_with_a_message(trained_run, capsys, tmp_path):
    tmp, data, out = trained_run
    assert train_script.main(["--data", str(data), "--output-dir", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert evaluate_script.main(["--checkpoint", str(tmp_path), "--output-dir", str(tmp_path / "x")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="divisible"):
        parse(TrainConfig, ["--d-model", "30", "--n-head", "4"])
    with pytest.raises(ConfigError, match=r"--label-smoothing must be in \[0, 1\), not 1.0"):
        parse(TrainConfig, ["--label-smoothing", "1"])


def test_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 7\nrepresentation: mean\nrun_name: x\n")
    cfg = parse(TrainConfig, [str(path)])
    assert cfg.max_steps == 7 and cfg.representation == "mean" and cfg.output_dir == os.path.join("checkpoints", "x")
    assert parse(TrainConfig, ["--max-steps", "9", "--finetune-encoder"]).finetune_encoder


@pytest.mark.parametrize("mode", [["--finetune-encoder", "--finetune-layers", "1"],
                                  ["--encoder", "scratch", "--scratch-d-model", "32", "--scratch-layers", "1",
                                   "--scratch-heads", "2", "--cls-init", "random-per-forward"]])
def test_train_with_an_encoder_in_the_step(tiny_encoder_dir, tmp_path, mode):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(120)) + "\n")
    argv = ["--encoder", tiny_encoder_dir, "--scratch-tokenizer", tiny_encoder_dir, "--data", str(data),
            "--output-dir", str(tmp_path / "run"), "--max-steps", "4", "--vocab-size", "400",
            "--validation-fraction", "0.1", "--test-fraction", "0.1", *TINY, *mode]
    assert train_script.main(argv) == 0
    model = ReconModel.from_pretrained(str(tmp_path / "run"))
    assert model.trains_encoder and any(p.requires_grad for p in model.encoder.parameters())


def test_a_run_can_fit_its_bag_of_words_head_first_and_start_from_the_encoders_embeddings(tmp_path, tiny_encoder_dir):
    """--bow-epochs, --bow-head full and --embedding-init encoder through train.py: the fit is logged
    and recorded in meta.json; a resumed run does not fit again."""
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    out, lines = tmp_path / "run", []
    argv = ["--encoder", tiny_encoder_dir, "--data", str(data), "--output-dir", str(out), "--max-steps", "4",
            "--vocab-size", "400", "--no-eval", "--bow-epochs", "5", "--bow-head", "full", "--embedding-init", "encoder",
            *TINY]
    from recon.training import train
    train(parse(TrainConfig, argv), log=lines.append)
    meta = json.loads((out / "checkpoint-4" / "meta.json").read_text())
    fit = meta["bow_fit"]
    assert fit["steps"] == round(5 * meta["data"]["train_texts"] / 256) and fit["recall_after"] > fit["recall_before"]
    assert meta["args"]["embedding_init"] == "encoder" and meta["args"]["bow_head"] == "full"
    assert any(line.startswith("decoder token embeddings:") for line in lines)
    lines.clear()
    train(parse(TrainConfig, argv + ["--resume"]), log=lines.append)
    assert not any("fitted alone" in line or "token embeddings" in line for line in lines)


def test_guidance_experiment_decodes_as_greedy_at_zero_and_restores_what_it_patched(trained_run, tmp_path):
    import importlib.util
    from recon.decoder import Decoder
    from recon.decoding import greedy
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "guidance.py")
    spec = importlib.util.spec_from_file_location("guidance", path)
    guidance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guidance)
    tmp, data, out = trained_run
    model = ReconModel.from_pretrained(str(out))
    c, vectors = model.config, model.encode(sentences(12))
    plain = greedy(model.decoder, vectors, c.bos_id, c.eos_id)
    assert guidance.guided_greedy(0.0)(model.decoder, vectors, c.bos_id, c.eos_id) == plain
    assert guidance.guided_greedy(50.0)(model.decoder, vectors, c.bos_id, c.eos_id) != plain
    run_blocks = Decoder.run_blocks
    assert guidance.main(["--cfg", "0.5", "--prior-scale", "2", "--", "--checkpoint", str(out), "--output-dir",
                          str(tmp_path / "g"), "--retrieval-pool", "0"]) == 0
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["num_examples"] > 0
    assert Decoder.run_blocks is run_blocks and guidance.recon.model.greedy is greedy
