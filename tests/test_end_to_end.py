"""End to end on the packaged all-MiniLM-L6-v2: the vector really carries the sentence."""

import json

import pytest

import evaluate as evaluate_script
import train as train_script
from recon.data import load_raw_texts, split_sentences
from recon.encoder import DEFAULT_ENCODER, load_encoder


@pytest.mark.slow
def test_memorise_64_wikipedia_sentences(tmp_path):
    texts, _ = load_raw_texts("wiki-offline")
    _, tok = load_encoder(DEFAULT_ENCODER)
    sents = [s for t in texts[:80] for s in split_sentences(t)
             if 40 < len(s) and len(tok(s, add_special_tokens=False)["input_ids"]) <= 32][:64]
    assert len(sents) == 64
    data = tmp_path / "64.txt"
    data.write_text("\n".join(sents) + "\n")
    out = tmp_path / "run"
    argv = ["--data", str(data), "--output-dir", str(out), "--validation-fraction", "0", "--test-fraction", "0",
            "--no-eval", "--max-steps", "300", "--warmup-steps", "20", "--lr", "2e-3", "--batch-size", "32",
            "--d-model", "128", "--n-layer", "2", "--n-head", "4", "--dropout", "0", "--vocab-size", "600", "--max-target-len", "128",
            "--eval-steps", "300", "--cache-dir", "", "--substitute-copies", "0"]  # the sentences alone
    assert train_script.main(argv) == 0
    ev = tmp_path / "ev"  # the decoder as it is: without the default ban on repeated 3-grams
    assert evaluate_script.main(["--checkpoint", str(out), "--data", str(data), "--split", "all",
                                 "--no-repeat-ngram", "0", "--output-dir", str(ev)]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["num_examples"] == 64
    assert m["exact_match"] >= 90.0
    assert m["control_random_exact_match"] <= 5.0 and m["control_random_bleu"] < m["bleu"] / 2
    # a decoder that writes its sentences back repeats their words as often as they do, and the report says so
    assert m["reference_repeated_word"] > 0 and abs(m["repeated_word"] - m["reference_repeated_word"]) <= 5
    assert "| references repeating a word of 5+ letters % |" in (ev / "report.md").read_text()
    # the ban (on by default) puts the sentences that repeat a 3-gram of decoder tokens out of reach
    assert evaluate_script.main(["--checkpoint", str(out), "--data", str(data), "--split", "all",
                                 "--output-dir", str(tmp_path / "ban")]) == 0
    ban = json.loads((tmp_path / "ban" / "metrics.json").read_text())
    assert ban["decoding"]["no_repeat_ngram"] == 3 and ban["reference_unreachable_no_repeat"] > 0
    assert ban["exact_match"] <= 100 - ban["reference_unreachable_no_repeat"] + 1e-9
