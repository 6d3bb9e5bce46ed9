"""The README's first command: the synthetic demo recipe at its quick (CI) size, end to end.

It must finish every stage and write a summary that compares every pretrained encoder with
log-Mel and with its own random-init control on speaker ID, style and the spoken-word task, and
names the best encoder per task. (Whether pretraining wins is what the full-size demo shows; the
quick size only pretrains for seconds.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from helpers import script_env

from speechssl.corpora.words import VOCABULARY
from speechssl.data.manifest import read_manifest
from speechssl.downstream.summary import best_per_task

REPO = Path(__file__).resolve().parents[1]


def test_demo_quick(tmp_path):
    shutil.copytree(REPO / "egs", tmp_path / "egs", ignore=shutil.ignore_patterns("data", "exp"))
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    env = script_env(MPLBACKEND="Agg")
    proc = subprocess.run(["bash", str(tmp_path / "egs/synthetic/ssl/run.sh"), "--quick", "--backend", "formant"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    demo = tmp_path / "egs/synthetic/ssl"
    # The unlabelled pool and the labelled set are disjoint recordings of the same speakers.
    pool = read_manifest(demo / "data/pool/manifest.jsonl")
    labelled = read_manifest(demo / "data/labelled/manifest.jsonl")
    assert not {r["id"] for r in pool} & {r["id"] for r in labelled}
    assert {r["speaker"] for r in pool} == {r["speaker"] for r in labelled}
    # Words: speaker-independent (no test speaker has a label in the pool), every word on both sides;
    # other recordings of the words are in the unlabelled pretraining pool.
    word_pool, word_test = (read_manifest(demo / f"data/words/{p}.jsonl") for p in ("pool", "test"))
    assert not {r["speaker"] for r in word_pool} & {r["speaker"] for r in word_test}
    assert {r["word"] for r in word_pool} == {r["word"] for r in word_test} == set(VOCABULARY)
    pretrain = read_manifest(demo / "data/pretrain/train.jsonl") + read_manifest(demo / "data/pretrain/dev.jsonl")
    assert sum("word" in r for r in pretrain) == 8 * 10  # --quick: 8 speakers x 10 word clips
    assert not {r["id"] for r in pretrain} & {r["id"] for r in word_pool + word_test}
    for m in ("apc", "cpc", "wav2vec2"):
        assert (demo / f"exp/{m}/encoder/model.safetensors").is_file()
        assert (demo / f"exp/{m}_random/encoder/model.safetensors").is_file()
        assert (demo / f"exp/feats/{m}/index.tsv").is_file()
    verdict = json.loads((demo / "exp/summary.json").read_text())
    assert set(verdict["encoders"]) == {"apc", "cpc", "wav2vec2"}
    for per_task in verdict["encoders"].values():
        assert set(per_task) == {"speaker", "style", "word"}
        assert all(v["vs_reference"] is not None and v["vs_control"] is not None for v in per_task.values())
    summary = (demo / "exp/summary.md").read_text()
    assert "| logmel | baseline |" in summary and "| apc_random | control |" in summary
    assert "word n=1" in summary and "**Best per task**" in summary
    assert set(verdict["best"]) == {"speaker", "style", "word"}
    le_word = json.loads((demo / "exp/le_word/results.json").read_text())
    assert {r["train_size"] for r in le_word["runs"] if r["shots"] == 1} == {len(VOCABULARY)}
    assert (demo / "exp/summary.png").read_bytes()[:4] == b"\x89PNG"
    # Rerunning skips every finished stage.
    again = subprocess.run(["bash", str(demo / "run.sh"), "--quick", "--backend", "formant"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stderr.count("(done, skipped") == 6


def test_summary_names_the_best_encoder_per_task():
    def curves(**means):
        return {"protocol": {"shots": [2, 8]},
                "curves": {e: {"2": {"mean": m}, "8": {"mean": 0.9}} for e, m in means.items()}}  # fmt: skip

    loaded = {"speaker": curves(logmel=0.3, apc=0.4, apc_random=0.35),
              "word": curves(logmel=0.5, apc=0.2, cpc=0.3, cpc_random=0.6)}  # fmt: skip
    kinds = {"logmel": "baseline", "apc": "ssl", "cpc": "ssl", "apc_random": "control", "cpc_random": "control"}
    best = best_per_task(loaded, kinds)
    assert best["speaker"] == {"shots": 2, "encoder": "apc", "kind": "ssl", "score": 0.4, "best_ssl": "apc",
                               "best_ssl_score": 0.4}  # fmt: skip
    assert best["word"] == {"shots": 2, "encoder": "cpc_random", "kind": "control", "score": 0.6, "best_ssl": "cpc",
                            "best_ssl_score": 0.3}  # fmt: skip
