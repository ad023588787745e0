import os
import shutil

import pytest

from conftest import sentences
from recon.sweep import expand, load_sweep, main, run_config, run_sweep
from recon.training import train


@pytest.fixture
def spec(tiny_encoder_dir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(sentences(120)) + "\n")
    return {
        "output_dir": str(tmp_path / "sweep"),
        "base": {"encoder": tiny_encoder_dir, "data": str(data), "max_steps": 4, "save_steps": 2, "d_model": 32,
                 "n_layer": 1, "n_head": 2, "vocab_size": 400, "batch_size": 16, "validation_fraction": 0.1,
                 "test_fraction": 0.1, "eval_steps": 2, "cache_dir": ""},
        "grids": [{"representation": ["cls", "mean"], "layer": [1, 2]}, {"representation": ["pooler"], "layer": [1]}],
    }


def test_expand_names_every_combination():
    runs = expand({"grids": [{"a": [1, 2], "b": ["x", "y/z"]}, {"a": [1], "b": ["x"]}, {"c": "token:1"}]})
    assert [n for n, _ in runs] == ["a=1_b=x", "a=1_b=y-z", "a=2_b=x", "a=2_b=y-z", "c=token1"]


def test_sweep_runs_skips_finished_and_resumes_interrupted(spec):
    quiet = lambda *a: None
    calls = []

    def counting_train(cfg):
        calls.append(cfg)
        return train(cfg, log=quiet)

    rows = run_sweep(spec, counting_train, log=quiet)
    # pooler at layer 1 is impossible: reported, not run, not in the table
    assert [r["run"] for r in rows] == ["representation=cls_layer=1", "representation=cls_layer=2",
                                        "representation=mean_layer=1", "representation=mean_layer=2"]
    assert all(r["bleu"] is not None and r["control_shuffled_bleu"] is not None for r in rows)
    out = spec["output_dir"]
    for name in ("results.csv", "results.md", "by_layer.png", "runs.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert len(calls) == 5

    calls.clear()
    run_sweep(spec, counting_train, log=quiet)
    assert [c.output_dir for c in calls] == [os.path.join(out, "representation=pooler_layer=1")]  # only the impossible one is retried

    # an interrupted run (checkpoint, no evaluation) is resumed, not restarted
    victim = os.path.join(out, "representation=mean_layer=2")
    shutil.rmtree(os.path.join(victim, "eval-test"))
    shutil.rmtree(os.path.join(victim, "checkpoint-4"))
    cfg = run_config(spec, "representation=mean_layer=2", {"representation": "mean", "layer": 2})
    assert cfg.resume == "auto" and not cfg.overwrite
    calls.clear()
    run_sweep(spec, counting_train, log=quiet)
    assert [c.output_dir for c in calls if c.resume] == [victim]
    assert os.path.isdir(os.path.join(victim, "checkpoint-4"))


def test_sweep_cli(spec, tmp_path, capsys):
    import yaml
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert load_sweep(str(path))["output_dir"] == spec["output_dir"]
    assert main([str(path), "--dry-run"]) == 0
    assert "representation=cls_layer=1: to run" in capsys.readouterr().out
    path.write_text("grids: []\n")
    assert main([str(path)]) == 2
    assert "needs at least output_dir" in capsys.readouterr().err


def test_shipped_experiment_configs_are_valid():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    configs = [f for f in os.listdir(root) if f.endswith(".yaml")]
    assert configs
    for name in configs:
        spec = load_sweep(os.path.join(root, name))
        for run, overrides in expand(spec):
            run_config(spec, run, overrides)  # every field exists and every value passes its checks
