"""A run killed in the middle of appending to metrics.jsonl leaves a line cut short: rerunning the
same command must still resume (the cut line is dropped with a warning), and `speechssl inspect`
must still read the log."""

from __future__ import annotations

import json
import logging

from speechssl.train.metrics import MetricsLogger, read_metrics


def _log(tmp_path, steps):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in steps:
        logger.write({"split": "train", "step": step, "loss": 1.0 / step})
    return logger


def test_cut_last_line_is_skipped_when_reading(tmp_path, caplog):
    _log(tmp_path, [1, 2, 3])
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"split": "train", "step": 4, "lo')  # killed mid-write
    caplog.set_level(logging.WARNING)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert "metrics.jsonl line 4: not a metrics record" in caplog.text


def test_resume_drops_the_cut_line_and_later_steps(tmp_path):
    logger = _log(tmp_path, [1, 2, 3])
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"split": "train", "step": 4, "lo')
    logger.truncate_after(2)  # resuming from the step-2 checkpoint
    logger.write({"split": "train", "step": 3, "loss": 0.5})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["loss"] == 0.5
