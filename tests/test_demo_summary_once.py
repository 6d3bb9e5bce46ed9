"""The demo's last stage prints its summary once (egs/synthetic/ssl/run.sh stage 6 alone, on fake curves)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from helpers import script_env

REPO = Path(__file__).resolve().parents[1]


def _fake_curves(folder: Path) -> None:
    folder.mkdir(parents=True)
    shots = (1, 4)
    curves = {"logmel": [0.3, 0.5], "apc": [0.4, 0.6], "apc_random": [0.35, 0.5]}
    (folder / "results.json").write_text(json.dumps({
        "protocol": {"name": "label_efficiency", "shots": list(shots), "metric": "accuracy"},
        "curves": {e: {str(n): {"mean": m, "std": 0.01, "scores": [m]} for n, m in zip(shots, ms)}
                   for e, ms in curves.items()},
        "runs": [],
    }))  # fmt: skip


def test_summary_stage_prints_the_summary_once(tmp_path):
    shutil.copytree(REPO / "egs", tmp_path / "egs", ignore=shutil.ignore_patterns("data", "exp"))
    demo = tmp_path / "egs/synthetic/ssl"
    for task in ("speaker", "style", "word"):
        _fake_curves(demo / f"exp/le_{task}")
    env = script_env(MPLBACKEND="Agg")
    proc = subprocess.run(["bash", str(demo / "run.sh"), "--quick", "--stage", "6", "--stop_stage", "6"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table_row = "| apc | ssl |"
    assert table_row in (demo / "exp/summary.md").read_text()
    assert proc.stdout.count(table_row) == 1, proc.stdout
