"""Bootstrap intervals and paired tests: BLEU on a resample is sacrebleu's on those sentences,
and the tests say what they should of equal, better and worse decodings."""

import gzip
import json
import shutil

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from conftest import sentences
from recon import significance
from recon.metrics import corpus_scores
from recon.significance import Scores, intervals, paired, resample_weights


def _pair(n=60, seed=0):
    """References, a decoding with about half the words right, and a worse one."""
    rng = np.random.default_rng(seed)
    refs = sentences(n, seed=seed)
    def damage(text, rate):
        words = text.split()
        return " ".join(w if rng.random() > rate else "xyz" for w in words)
    return refs, [damage(t, 0.3) for t in refs], [damage(t, 0.7) for t in refs]


def test_the_whole_set_and_each_resample_score_as_sacrebleu_and_the_metrics_do():
    refs, good, _ = _pair()
    s = Scores(good, refs)
    whole, expected = s.whole(), corpus_scores(good, refs)
    assert whole["bleu"] == pytest.approx(expected["bleu"], abs=1e-9)
    assert whole["token_f1"] == pytest.approx(expected["token_f1"]) and whole["exact_match"] == pytest.approx(expected["exact_match"])
    weights = next(resample_weights(len(refs), samples=3, seed=1))
    assert weights.shape == (3, len(refs)) and (weights.sum(1) == len(refs)).all()
    drawn = s.on(weights)
    for row, score in zip(weights, drawn["bleu"]):
        idx = np.repeat(np.arange(len(refs)), row)  # the resample, written out sentence by sentence
        assert score == pytest.approx(BLEU().corpus_score([good[i] for i in idx], [[refs[i] for i in idx]]).score, abs=1e-9)


def test_intervals_hold_the_figure_and_narrow_with_more_sentences():
    refs, good, _ = _pair(200)
    wide, narrow = intervals(Scores(good[:20], refs[:20])), intervals(Scores(good, refs))
    whole = Scores(good, refs).whole()
    for k in ("bleu", "token_f1"):
        assert narrow[k][0] < whole[k] < narrow[k][1]
        assert narrow[k][1] - narrow[k][0] < wide[k][1] - wide[k][0]
    # the same seed gives the same interval; another seed another one
    assert intervals(Scores(good, refs), seed=3) == intervals(Scores(good, refs), seed=3) != narrow


def test_paired_tests_of_equal_better_and_worse_decodings():
    refs, good, bad = _pair(80)
    a, b = Scores(good, refs), Scores(bad, refs)
    better = paired(a, b, samples=500)
    assert better["bleu"]["difference"] > 0 and better["bleu"]["low"] > 0
    assert better["bleu"]["p"] == pytest.approx(2 / 501)  # no resample reverses it
    worse = paired(b, a, samples=500)
    assert worse["token_f1"]["difference"] == pytest.approx(-better["token_f1"]["difference"])
    assert worse["token_f1"]["high"] < 0 and worse["token_f1"]["p"] == better["token_f1"]["p"]
    same = paired(a, Scores(list(good), refs), samples=500)
    assert same["bleu"]["difference"] == 0 and same["bleu"]["p"] == 1
    # one changed sentence in 80 is no evidence either way
    nearly = list(good)
    nearly[0] = refs[0]
    close = paired(Scores(nearly, refs), a, samples=500)["token_f1"]
    assert close["difference"] > 0 and close["p"] > 0.05 and close["low"] <= 0 <= close["high"]
    with pytest.raises(ValueError, match="same sentences"):
        paired(a, Scores(good[:10], refs[:10]))


def _write(folder, refs, preds, cosines=None):
    folder.mkdir()
    with open(folder / "predictions.jsonl", "w") as f:
        for i, (r, p) in enumerate(zip(refs, preds)):
            f.write(json.dumps({"reference": r, "prediction": p, **({"cosine_standardized": cosines[i]} if cosines else {})}) + "\n")


def test_the_command_matches_rows_by_reference_and_reads_correction_conditions(tmp_path, capsys):
    refs, good, bad = _pair(50)
    cos_good, cos_bad = [0.8] * 50, [0.5] * 50
    _write(tmp_path / "good", refs, good, cos_good)
    order = list(reversed(range(50)))  # the other evaluation lists its rows in another order
    _write(tmp_path / "bad", [refs[i] for i in order], [bad[i] for i in order], [cos_bad[i] for i in order])
    (tmp_path / "good" / "correction.json").write_text(json.dumps({"conditions": {"no feedback": {"predictions": bad}}}))
    out = tmp_path / "tests.json"
    assert significance.main(["--baseline", str(tmp_path / "bad"), "--systems",
                              f"{tmp_path / 'good'},{tmp_path / 'good'}@no feedback", "--samples", "200",
                              "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| BLEU |" in printed and "cosine (std.)" in printed
    saved = json.loads(out.read_text())["systems"]
    r = lambda xs: [xs[i] for i in order]  # rows in the baseline's order, as the command resamples them
    direct = paired(Scores(r(good), r(refs), extra={"cosine_standardized": r(cos_good)}),
                    Scores(r(bad), r(refs), extra={"cosine_standardized": r(cos_bad)}), samples=200)
    assert saved[str(tmp_path / "good")]["bleu"] == pytest.approx(direct["bleu"])
    assert saved[str(tmp_path / "good")]["cosine_standardized"]["difference"] == pytest.approx(0.3)
    condition = saved[f"{tmp_path / 'good'}@no feedback"]
    assert condition["bleu"]["difference"] == 0 and "cosine_standardized" not in condition


def test_a_gzipped_evaluation_reads_as_the_plain_one(tmp_path):
    """experiments/results keeps its evaluations' predictions as predictions.jsonl.gz: a folder or file of them
    loads as the plain file does, and a folder with neither is refused."""
    refs, good, _ = _pair(20)
    _write(tmp_path / "plain", refs, good, [0.5] * 20)
    (tmp_path / "kept").mkdir()
    with open(tmp_path / "plain" / "predictions.jsonl", "rb") as src, \
            gzip.open(tmp_path / "kept" / "predictions.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = significance.load_system(str(tmp_path / "plain"))
    assert plain[1] == good and plain[2] == {"cosine_standardized": [0.5] * 20}
    assert significance.load_system(str(tmp_path / "kept")) == plain
    assert significance.load_system(str(tmp_path / "kept" / "predictions.jsonl.gz")) == plain
    assert significance.predictions_file(str(tmp_path)) is None


def test_the_command_says_what_is_wrong(tmp_path, capsys):
    refs, good, _ = _pair(10)
    _write(tmp_path / "a", refs, good)
    _write(tmp_path / "b", sentences(10, seed=9), good)
    cases = [([str(tmp_path / "a"), str(tmp_path / "nowhere")], "no predictions.jsonl there"),
             ([str(tmp_path / "a"), str(tmp_path / "b")], "holds other sentences than the baseline"),
             ([str(tmp_path / "a"), f"{tmp_path / 'a'}@no feedback"], "no correction.json in"),
             (["", str(tmp_path / "a")], "--baseline is required")]
    for (baseline, systems), message in cases:
        assert significance.main(["--baseline", baseline, "--systems", systems]) == 2
        assert message in capsys.readouterr().err
    assert significance.main(["--baseline", str(tmp_path / "a")]) == 0  # its intervals alone
    assert "95% intervals over 1000 resamples" in capsys.readouterr().out
    (tmp_path / "a" / "correction.json").write_text(json.dumps({"conditions": {"correction": {"predictions": good}}}))
    assert significance.main(["--baseline", str(tmp_path / "a"), "--systems", f"{tmp_path / 'a'}@no feedback"]) == 2
    assert "has no condition 'no feedback'; it has correction" in capsys.readouterr().err


def _better(preds, refs, every=4):
    """The same decoding with every `every`-th sentence rebuilt exactly."""
    return [r if i % every == 0 else p for i, (p, r) in enumerate(zip(preds, refs))]


def test_a_setting_of_several_runs_takes_in_the_seeds_spread():
    refs, good, bad = _pair(80)
    g, b = Scores(good, refs), Scores(bad, refs)
    # a setting of one run is the paired test of before, to the digit
    assert paired([g], [b], samples=300) == paired(g, b, samples=300)
    assert intervals([g], samples=300) == intervals(g, samples=300)
    # two runs that agree: the seeds add nothing; two that disagree: the interval spans both
    same, split = intervals([g, Scores(list(good), refs)], samples=400), intervals([g, b], samples=400)
    assert same == intervals(g, samples=400)
    mean = (g.whole()["bleu"] + b.whole()["bleu"]) / 2
    assert split["bleu"][0] < (mean + b.whole()["bleu"]) / 2 and split["bleu"][1] > (mean + g.whole()["bleu"]) / 2
    test = paired([g, b], [b, b], samples=300)["bleu"]
    assert test["a"] == pytest.approx(mean) and test["a_runs"] == pytest.approx([g.whole()["bleu"], b.whole()["bleu"]])


def test_paired_seeds_see_a_gain_that_every_run_shares():
    refs, good, bad = _pair(80)
    base = [Scores(good, refs), Scores(bad, refs)]  # two seeds far apart
    fixed = [Scores(_better(good, refs), refs), Scores(_better(bad, refs), refs)]  # each run a little better
    together = paired(fixed, base, samples=400, paired_seeds=True)["bleu"]
    apart = paired(fixed, base, samples=400)["bleu"]
    assert together["difference"] == apart["difference"] > 0
    assert together["low"] > 0 and together["p"] < 0.01  # every resample draws the same runs of both sides
    assert apart["low"] < 0 < apart["high"] and apart["p"] > 0.05  # the seeds' spread swamps the gain
    with pytest.raises(ValueError, match="as many runs"):
        paired(fixed, base[:1], paired_seeds=True)


def test_the_command_pools_runs_joined_by_plus(tmp_path, capsys):
    refs, good, bad = _pair(60)
    for name, preds in (("b0", good), ("b1", bad), ("a0", _better(good, refs)), ("a1", _better(bad, refs))):
        _write(tmp_path / name, refs, preds)
    (tmp_path / "a0" / "correction.json").write_text(json.dumps(
        {"conditions": {"no feedback": {"predictions": good, "cosine_standardized": [0.5] * 60}}}))
    out = tmp_path / "pooled.json"
    base, system = f"{tmp_path / 'b0'}+{tmp_path / 'b1'}", f"{tmp_path / 'a0'}+{tmp_path / 'a1'}"
    assert significance.main(["--baseline", base, "--systems", system, "--paired-seeds", "true", "--samples", "300",
                              "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "and of its 2 runs" in printed and " / " in printed.split("| BLEU |")[1].splitlines()[0]
    saved = json.loads(out.read_text())
    assert saved["paired_seeds"] is True
    direct = paired([Scores(_better(good, refs), refs), Scores(_better(bad, refs), refs)],
                    [Scores(good, refs), Scores(bad, refs)], samples=300, paired_seeds=True)
    assert saved["systems"][system]["bleu"] == pytest.approx(direct["bleu"])
    # a correction.json condition brings its rows' cosines
    assert significance.load_system(f"{tmp_path / 'a0'}@no feedback")[2] == {"cosine_standardized": [0.5] * 60}
    assert significance.main(["--baseline", base, "--systems", str(tmp_path / "a0"), "--paired-seeds", "true"]) == 2
    assert "pairs run i of" in capsys.readouterr().err
    _write(tmp_path / "other", sentences(60, seed=5), good)
    assert significance.main(["--baseline", base, "--systems", f"{tmp_path / 'a0'}+{tmp_path / 'other'}"]) == 2
    assert "holds other sentences than the baseline" in capsys.readouterr().err
