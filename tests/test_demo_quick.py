"""The README's first command: the synthetic demo recipe at its quick (CI) size, end to end.

It must finish every stage and write a summary that compares every pretrained encoder with
log-Mel and with its own random-init control. (Whether pretraining wins is what the full-size
demo shows; the quick size only pretrains for seconds.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from speechssl.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def test_demo_quick(tmp_path):
    shutil.copytree(REPO / "egs", tmp_path / "egs", ignore=shutil.ignore_patterns("data", "exp"))
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", MPLBACKEND="Agg")
    proc = subprocess.run(["bash", str(tmp_path / "egs/synthetic/ssl/run.sh"), "--quick", "--backend", "formant"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    demo = tmp_path / "egs/synthetic/ssl"
    # The unlabelled pool and the labelled set are disjoint recordings of the same speakers.
    pool = read_manifest(demo / "data/pool/manifest.jsonl")
    labelled = read_manifest(demo / "data/labelled/manifest.jsonl")
    assert not {r["id"] for r in pool} & {r["id"] for r in labelled}
    assert {r["speaker"] for r in pool} == {r["speaker"] for r in labelled}
    for m in ("apc", "cpc", "wav2vec2"):
        assert (demo / f"exp/{m}/encoder/model.safetensors").is_file()
        assert (demo / f"exp/{m}_random/encoder/model.safetensors").is_file()
        assert (demo / f"exp/feats/{m}/index.tsv").is_file()
    verdict = json.loads((demo / "exp/summary.json").read_text())
    assert set(verdict["encoders"]) == {"apc", "cpc", "wav2vec2"}
    for per_task in verdict["encoders"].values():
        assert set(per_task) == {"speaker", "style"}
        assert all(v["vs_reference"] is not None and v["vs_control"] is not None for v in per_task.values())
    summary = (demo / "exp/summary.md").read_text()
    assert "| logmel | baseline |" in summary and "| apc_random | control |" in summary
    assert (demo / "exp/summary.png").read_bytes()[:4] == b"\x89PNG"
    # Rerunning skips every finished stage.
    again = subprocess.run(["bash", str(demo / "run.sh"), "--quick", "--backend", "formant"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stderr.count("(done, skipped") == 6
