"""Typed results keep the results.json schema; label efficiency computes apart from rendering."""

from __future__ import annotations

import json

import torch

from speechssl.downstream import FeatureSet, downstream_config, run_experiment
from speechssl.downstream.protocols import compute_label_efficiency, write_label_efficiency
from speechssl.downstream.results import ExperimentResult, LabelEfficiencyResult, LabelEfficiencyRun

# The keys, in file order, that results.json had when run_experiment returned a dict.
EXPERIMENT_KEYS = ["format_version", "task", "encoder", "featurizer", "head", "protocol", "hyperparameters", "seeds",
                   "splits", "best_step", "steps_run", "dev", "test", "summary", "summary_split", "history",
                   "speechssl_version", "git_revision", "seconds", "run_key"]
LABEL_EFFICIENCY_KEYS = ["format_version", "task", "encoders", "protocol", "hyperparameters", "seeds", "splits",
                         "curves", "runs"]
RUN_KEYS = ["encoder", "shots", "seed", "train_size", "train_hash", "test", "layer_weights"]


class _Source:
    def features(self, records, desc=""):
        feats = []
        for r in records:
            g = torch.Generator().manual_seed(int(r["id"]))
            feats.append([torch.randn(4, 3, generator=g) + (1.5 if r["cls"] == "a" else -1.5)])
        return FeatureSet([r["id"] for r in records], feats, ["features"], 160)

    def describe(self):
        return {"spec": "test", "role": "baseline"}

    def fingerprint(self):
        return {"spec": "test"}

    def layer_aliases(self):
        return None  # cannot tell: run_experiment compares values

    def release(self):
        pass


RECS = [{"id": str(i), "cls": "ab"[i % 2]} for i in range(16)]
CFG = downstream_config({"head": {"name": "linear_probe"}, "train": {"max_steps": 3}})


def test_experiment_result_is_typed_and_writes_the_same_schema(tmp_path):
    res, _ = run_experiment(_Source(), {"train": RECS[:10], "test": RECS[10:]}, "cls", CFG, tmp_path, progress=False)
    assert isinstance(res, ExperimentResult)
    assert res.task["classes"] == ["a", "b"] and res.test is res["test"] and res.dev is None
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written) == EXPERIMENT_KEYS == list(res)
    assert written == json.loads(json.dumps(res.to_dict()))
    assert ExperimentResult.from_dict(written).to_dict() == written


def test_label_efficiency_computes_without_writing_and_renders_from_the_result(tmp_path):
    result = compute_label_efficiency({"x": _Source()}, RECS[:10], None, RECS[10:], "cls", CFG, [1, 2], [0, 1],
                                      tmp_path, progress=False)
    assert isinstance(result, LabelEfficiencyResult) and all(isinstance(r, LabelEfficiencyRun) for r in result.runs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.jsonl"]  # the journal only: nothing rendered
    assert [len(result.curves["x"][n]["scores"]) for n in ("1", "2")] == [2, 2]
    write_label_efficiency(result, tmp_path / "out", classes=2)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(written) == LABEL_EFFICIENCY_KEYS and list(written["runs"][0]) == RUN_KEYS
    table = (tmp_path / "out" / "label_efficiency.md").read_text().splitlines()
    assert table[0] == "| encoder | 1/class | 2/class |"
    mean, std = result.curves["x"]["1"]["mean"], result.curves["x"]["1"]["std"]
    assert table[2].startswith(f"| x | {mean:.3f} ± {std:.3f} |")
    assert (tmp_path / "out" / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun reads every run back from the journal, with equal results
    again = compute_label_efficiency({"x": _Source()}, RECS[:10], None, RECS[10:], "cls", CFG, [1, 2], [0, 1],
                                     tmp_path, progress=False)
    assert again.to_dict() == result.to_dict()
