"""Pretraining engine across processes: SIGTERM checkpoint + exact resume of the CLI, and
DistributedDataParallel (2 CPU ranks, gloo) matching one process on the combined batch."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import torch
import yaml
from helpers import free_port as _free_port
from helpers import make_corpus, recipe
from helpers import run_group as _run
from helpers import subprocess_env as _env

from speechssl.data.dataset import collate_audio
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import SELF_SIGTERM_ENV, Trainer, pretrain

TESTS = Path(__file__).resolve().parent


def _runner(tmp_path: Path) -> Path:
    """A script running ``speechssl`` with the test model registered (as torchrun/SLURM would run it)."""
    script = tmp_path / "run_speechssl.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import helpers  # noqa: F401  (registers toy_linear)\n"
        "from speechssl.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return script


def _weights(exp: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(exp / "checkpoints"))["model"]


def test_sigterm_writes_checkpoint_and_resume_is_exact(tmp_path):
    train = make_corpus(tmp_path / "data", n=10)
    cfg_path = recipe(tmp_path, train={"max_steps": 6, "ckpt_every_steps": 100, "valid_every": 0})
    reference = pretrain(load_pretrain_config(cfg_path), train, None, tmp_path / "ref")
    cmd = [sys.executable, str(_runner(tmp_path)), "pretrain", "--config", str(cfg_path), "--train", str(train),
           "--exp", str(tmp_path / "exp")]
    first = _run(cmd, _env(**{SELF_SIGTERM_ENV: "4"}))
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    assert "stopped by SIGTERM at step 4" in first.stderr
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "exp" / "checkpoints")] == ["step_00000004.pt"]
    assert not (tmp_path / "exp" / "encoder").exists()
    second = _run(cmd, _env())
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stderr and "finished at step 6" in second.stdout
    assert reference.step == 6
    ref, got = _weights(tmp_path / "ref"), _weights(tmp_path / "exp")
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


GRAD_CHECK = """
import os, sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
import helpers  # noqa: F401  (registers toy_linear)
from speechssl.data.dataset import collate_audio
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import Trainer

# 1) one forward/backward through the engine's DDP path, each rank on its half of 4 utterances
# (the group is created here once, so the Trainer and the command below both join it)
import torch.distributed as dist
dist.init_process_group("gloo")
cfg_path, train, out = sys.argv[1:4]
rank = int(os.environ["RANK"])
trainer = Trainer(load_pretrain_config(cfg_path), train, None, Path(out) / "ddp_grad")
ds = trainer.train_loader.dataset
trainer.forward_backward([collate_audio([ds[2 * rank], ds[2 * rank + 1]])])
if rank == 0:
    torch.save({{n: p.grad.clone() for n, p in trainer.model.named_parameters()}}, Path(out) / "ddp_grads.pt")
trainer.close()
# 2) the pretrain command itself
from speechssl.cli.main import main
code = main(sys.argv[4:])
dist.destroy_process_group()
sys.exit(code)
"""


def test_ddp_two_cpu_ranks_match_one_process(tmp_path):
    # 8 equal utterances of 0.25 s; 1 s per optimiser step: 2 ranks x 0.5 s, or 1 process x 2 x 0.5 s
    train = make_corpus(tmp_path / "data", n=8, seconds=(0.25, 0.25), equal=True)
    # 5 validation utterances -> 3 batches of <= 0.5 s: uneven over 2 ranks, none may be counted twice
    valid = make_corpus(tmp_path / "valid", n=5, seconds=(0.25, 0.25), equal=True, seed=1, name="valid")
    cfg_path = recipe(tmp_path, model={"noise": 0.0}, data={"device_batch_seconds": 0.5, "crop_seconds": 0.25},
                      train={"max_steps": 5, "valid_every": 0, "ckpt_every_steps": 100})
    script = tmp_path / "ddp_check.py"
    script.write_text(GRAD_CHECK.format(tests=str(TESTS)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(cfg_path), str(train), str(tmp_path), "pretrain", "--config", str(cfg_path),
           "--train", str(train), "--valid", str(valid), "--exp", str(tmp_path / "two")]
    proc = _run(cmd, _env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    # gradients: 2 ranks x 2 utterances == 1 process x the 4 utterances in one batch
    single = Trainer(load_pretrain_config(cfg_path), train, None, tmp_path / "single_grad")
    try:
        ds = single.train_loader.dataset
        assert single.accumulation == 2
        single.forward_backward([collate_audio([ds[i] for i in range(4)])])
        ddp_grads = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
        for n, p in single.model.named_parameters():
            torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-5, atol=1e-7)
    finally:
        single.close()
    # training: same effective batch in seconds, same weights as one process with accumulation 2
    one = pretrain(load_pretrain_config(cfg_path), train, valid, tmp_path / "one")
    info = yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["info"]
    assert info["world_size"] == 2 and info["accumulation"] == 1
    assert info["effective_batch_seconds"] == 1.0
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("split") != "valid"] == [1, 2, 3, 4, 5]  # only rank 0 writes
    # the final validation over both ranks equals one process's: every utterance counted once
    one_lines = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    ddp_valid = [x["loss"] for x in lines if x.get("split") == "valid"]
    one_valid = [x["loss"] for x in one_lines if x.get("split") == "valid"]
    assert len(ddp_valid) == len(one_valid) == 1
    assert abs(ddp_valid[0] - one_valid[0]) <= 5e-5 * max(1.0, abs(one_valid[0])), (ddp_valid, one_valid)
    assert one.step == 5
    ref, got = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6)
