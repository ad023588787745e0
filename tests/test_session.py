"""The GPU session script, end to end on the CPU with tiny settings: pack within the size limit,
run each part as its own command, every result in one folder."""

import json
import os
import tarfile

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import sentences
from recon.session import SessionError, load_plan, main as session_main, pack, restore, shrink, tree_bytes, unpack


@pytest.fixture
def plan(tiny_encoder_dir, tmp_path):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(sentences(300)) + "\n")
    tiny = {"encoder": "pack", "data": "pack:texts.txt", "d_model": 32, "n_layer": 1, "n_head": 2, "vocab_size": 400,
            "batch_size": 16, "max_steps": 20, "eval_steps": 10, "validation_fraction": 0.1, "test_fraction": 0.1,
            "cache_dir": "", "device": "cpu"}
    spec = {"budget_s": 400, "pack": {"encoder": tiny_encoder_dir, "data": [str(data)]}, "base": tiny,
            "parts": [{"name": "runs", "limit_s": 200, "parallel": 2, "eval_s": 20,
                       "runs": [{"run_name": "cls"}, {"run_name": "mean", "representation": "mean"}]},
                      {"name": "sharing", "limit_s": 200, "side_by_side": {"count": 2, "flags": {"max_steps": 5}},
                       "commands": ["{python} -c \"print(open('{pack:texts.txt}').readline())\" > {results}/first.txt",
                                    "{python} -c \"import os; print(os.environ['PYTHONPATH'])\" > {results}/path.txt",
                                    # a script under benchmarks/ on what part 1 trained ({work}/runs/PART/RUN)
                                    "{python} benchmarks/correction_cost.py --base {work}/runs/runs/cls --texts "
                                    "{work}/runs/runs/cls/eval-test/predictions.jsonl --sentences 4 --steps 2 "
                                    "--beam 2 --device cpu --max-seconds 600 --output {results}/correction_cost.json"]}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_a_session_packs_runs_each_part_and_keeps_every_result(plan, tiny_encoder_dir, tmp_path, capsys):
    packed, results = str(tmp_path / "pack"), str(tmp_path / "results")
    assert session_main(["pack", plan, "--output", packed]) == 0
    assert "MiB would travel (limit 64 MiB)" in capsys.readouterr().out
    # the encoder travels in fp16 and is restored to fp32: the weights are the fp16-rounded originals
    files = unpack(packed, str(tmp_path / "work"))
    original = load_file(os.path.join(tiny_encoder_dir, "model.safetensors"))
    restored = load_file(str(tmp_path / "work" / "encoder" / "model.safetensors"))
    assert restored.keys() == original.keys()
    assert all(torch.equal(restored[k], original[k].half().float()) for k in original if original[k].is_floating_point())
    assert open(files["texts.txt"]).read().splitlines() == sentences(300)
    assert session_main(["plan", packed]) == 0
    assert "in all 400 s of budget_s 400" in capsys.readouterr().out
    assert session_main(["run", packed, "--part", "1", "--results", results]) == 0
    for name in ("cls", "mean"):
        folder = os.path.join(results, "1-runs", name)
        metrics = json.load(open(os.path.join(folder, "eval-test", "metrics.json")))
        assert metrics["num_examples"] > 0 and "control_random_bleu" in metrics
        assert {"metrics.jsonl", "meta.json", "train.log"} <= set(os.listdir(folder))
        assert not any(n.startswith("checkpoint-") for n in os.listdir(folder))  # weights stay behind
    assert json.load(open(os.path.join(results, "1-runs", "mean", "meta.json")))["args"]["representation"] == "mean"
    part = json.load(open(os.path.join(results, "1-runs", "part.json")))
    assert part["parallel"] == 2 and all(r["returncode"] == 0 for r in part["runs"].values())
    archive = str(tmp_path / "out" / "part2.tgz")
    assert session_main(["run", packed, "--part", "2", "--results", results, "--archive", archive]) == 0
    with tarfile.open(archive) as tar:  # one file brings the part's results back from a lent machine
        assert {"2-sharing/part.json", "2-sharing/first.txt"} <= set(tar.getnames())
    shared = json.load(open(os.path.join(results, "2-sharing", "part.json")))["side_by_side"]
    assert shared["speedup"] > 0 and all(r["returncode"] == 0 for m in ("one after another", "side by side")
                                         for r in shared[m]["runs"].values())
    assert open(os.path.join(results, "2-sharing", "first.txt")).read().strip() == sentences(300)[0]
    # a command finds the repository's recon, installed or not, and reads part 1's run through {work}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert root in open(os.path.join(results, "2-sharing", "path.txt")).read().strip().split(os.pathsep)
    cost = json.load(open(os.path.join(results, "2-sharing", "correction_cost.json")))
    assert cost["sentences"] == 4 and len(cost["step_seconds"]) == cost["steps_done"] == 2 and cost["seconds_per_sentence"] > 0
    # each part's summary.md (in its archive too), and all parts in one: the figures of the runs' own files
    with tarfile.open(archive) as tar:
        assert "2-sharing/summary.md" in tar.getnames()
    assert session_main(["summary", results]) == 0
    text = open(os.path.join(results, "summary.md")).read()
    assert text in capsys.readouterr().out  # printed as written
    for name in ("cls", "mean"):
        metrics = json.load(open(os.path.join(results, "1-runs", name, "eval-test", "metrics.json")))
        meta = json.load(open(os.path.join(results, "1-runs", name, "meta.json")))
        assert f"| {name} | finished | {meta['step']} ({meta['max_steps']}) |" in text
        assert f"| {metrics['num_examples']} | {metrics['bleu']:.2f} | {metrics['token_f1']:.2f} |" in text
    assert "## 1-runs" in text and "## 2-sharing" in text and "Side by side: one after another" in text
    assert "| all of it, s a sentence |" in text and "Command 3 (exit 0" in text  # the table its log printed
    with pytest.raises(SessionError, match="holds no part folders"):
        from recon.session import summarize
        summarize(str(tmp_path / "out"))
    # a part run again skips what finished
    assert session_main(["run", packed, "--part", "1", "--results", results]) == 0
    again = json.load(open(os.path.join(results, "1-runs", "part.json")))
    assert all(r == {"status": "already finished"} for r in again["runs"].values())


def test_an_int8_pack_is_smaller_and_keeps_the_vectors(plan, tiny_encoder_dir, tmp_path):
    from recon.encoder import EncoderSpec
    original = load_file(os.path.join(tiny_encoder_dir, "model.safetensors"))
    restored = restore(shrink(original, "int8"))
    for name, v in original.items():
        if v.is_floating_point() and v.dim() == 2:  # int8 rows: within half a step of their scale
            step = v.abs().amax(dim=1, keepdim=True) / 127
            assert ((restored[name] - v).abs() <= step / 2 + 1e-7).all() and not torch.equal(restored[name], v)
        elif v.is_floating_point():
            assert torch.equal(restored[name], v.half().float())
    sizes = {w: pack(plan, str(tmp_path / w), weights=w, log=lambda *a: None) for w in ("fp16", "int8")}
    assert sizes["int8"] < sizes["fp16"]
    texts = sentences(50)
    vectors = {}
    for w in ("fp16", "int8"):
        unpack(str(tmp_path / w), str(tmp_path / f"work-{w}"))
        vectors[w] = EncoderSpec(encoder=str(tmp_path / f"work-{w}" / "encoder")).build().eval().encode(texts)
    exact = EncoderSpec(encoder=tiny_encoder_dir).build().eval().encode(texts)
    for w, v in vectors.items():
        assert torch.nn.functional.cosine_similarity(v, exact, dim=-1).min() > 0.99, w
    with pytest.raises(SessionError, match="use one of fp16, int8"):
        pack(plan, str(tmp_path / "p"), weights="int4", log=lambda *a: None)


def test_plans_and_packs_over_their_limits_are_refused(plan, tmp_path):
    spec = yaml.safe_load(open(plan))
    with pytest.raises(SessionError, match="over --limit-mib"):
        pack(plan, str(tmp_path / "p"), limit_mib=0.01, log=lambda *a: None)
    assert not os.path.exists(tmp_path / "p") and not os.path.exists(tmp_path / "p.tmp")
    # what travels is the pack and the repository's files together
    tree = tree_bytes() / 2 ** 20
    assert tree > 0.1
    small = pack(plan, str(tmp_path / "fits"), limit_mib=1000, log=lambda *a: None) / 2 ** 20
    with pytest.raises(SessionError, match="the repository's files are"):
        pack(plan, str(tmp_path / "p"), limit_mib=tree + small / 2, log=lambda *a: None)
    assert not os.path.exists(tmp_path / "p")
    for change, message in (({"budget_s": 300}, "add up to 400 s, over the plan's budget_s 300"),
                            ({"parts": [{**spec["parts"][0], "limit_s": 700}]}, "needs limit_s in")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**spec, **change}))
        with pytest.raises(SessionError, match=message):
            load_plan(str(bad))


def test_the_shipped_plan_fits_the_lent_machine_and_names_real_flags():
    from dataclasses import fields

    from recon.config import TrainConfig
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "sessions")
    for name in os.listdir(root):
        plan = load_plan(os.path.join(root, name))  # limits: each part <= 600 s, all <= budget_s <= 1500 s
        assert plan["budget_s"] <= 1500 and plan["command_limit_s"] <= 600
        known = {f.name for f in fields(TrainConfig)}
        for part in plan["parts"]:
            for flags in [plan["base"], *part.get("runs", []), part.get("side_by_side", {}).get("flags", {})]:
                assert set(flags) <= known, set(flags) - known


def test_the_repository_leaves_the_lent_plans_pack_room_to_travel():
    """What travels to a lent machine is the pack and the repository's files together, at most 64 MiB; the
    lent plan's int8 pack measured 34.9 MiB (docs/scale.md), so the repository must stay under the rest
    (it grew to 35.5 MiB once, with the evaluations' predictions kept uncompressed in experiments/results)."""
    from recon.session import MiB, tree_bytes
    tree = tree_bytes(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert tree + 34.9 * MiB <= 64 * MiB, f"the repository's files are {tree / MiB:.1f} MiB: keep large results gzipped"


def test_a_summary_that_fails_loses_nothing_the_part_wrote(plan, tmp_path, monkeypatch, capsys):
    import recon.session as session
    spec = yaml.safe_load(open(plan))
    spec["parts"] = [{"name": "echo", "limit_s": 60, "commands": ["{python} -c \"print('| a | table |')\""]}]
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(spec))
    packed, results, archive = str(tmp_path / "pack"), str(tmp_path / "results"), str(tmp_path / "out" / "p1.tgz")
    assert session_main(["pack", str(small), "--output", packed]) == 0

    def broken(folder):
        raise ValueError("a run's metrics.json is not JSON")
    monkeypatch.setattr(session, "part_summary", broken)
    assert session_main(["run", packed, "--part", "1", "--results", results, "--archive", archive]) == 0
    assert "summary.md not written (ValueError: a run's metrics.json is not JSON)" in capsys.readouterr().out
    with tarfile.open(archive) as tar:  # the part's results still come back, without the summary
        assert "1-echo/part.json" in tar.getnames() and "1-echo/summary.md" not in tar.getnames()
    monkeypatch.undo()
    assert "| a | table |" in session.summarize(results, log=lambda *a: None)  # built again from the files
