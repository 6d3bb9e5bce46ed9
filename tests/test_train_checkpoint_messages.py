"""Messages about files that are not readable checkpoints: one line naming the file, and a clear
word when an experiment folder has no readable checkpoint left (the run starts over)."""

from __future__ import annotations

import logging

import pytest
import torch

from speechssl.train import checkpoint as ckpt_io


def test_a_text_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "path": "a.wav"}\n')
    with pytest.raises(ckpt_io.UnreadableCheckpointError) as err:
        ckpt_io.load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable speechssl checkpoint (")
    assert "\n" not in message and "weights_only" not in message, message


def test_truncated_zip_keeps_the_first_line_of_torch_reason(tmp_path):
    path = tmp_path / "step_00000003.pt"
    torch.save({"kind": "x"}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ckpt_io.UnreadableCheckpointError, match=r"\(RuntimeError: .*\)$") as err:
        ckpt_io.load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_no_readable_checkpoint_left_is_said_plainly(tmp_path, caplog):
    (tmp_path / "step_00000003.pt").write_bytes(b"PK\x03\x04 truncated")
    caplog.set_level(logging.WARNING)
    assert ckpt_io.load_latest_intact(tmp_path) == (None, None)
    assert "falling back" not in caplog.text
    assert "no readable checkpoint left" in caplog.text and "starting from step 0" in caplog.text
    assert (tmp_path / "step_00000003.pt.unreadable").is_file()
