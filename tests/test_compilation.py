"""torch.compile (speechssl/compilation.py, train.compile, extract --compile): compiled == eager.

The tests compile with ``backend="aot_eager"`` (dynamo + AOT autograd, no C++ generation):
inductor took about 4 minutes for one tiny wav2vec2 model on this project's loaded 2-core
machine (tools/bench/run_all.py --only compile records it), far too slow for a unit test; what
these tests check -- the graphs capture our blocks and give eager's loss, gradients and
parameter names -- does not depend on the code generator.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import make_corpus, recipe, speech_batch, tiny_model

from speechssl.compilation import compile_model, is_compiled, reset
from speechssl.config import ConfigError, to_dict
from speechssl.models.apc import APCConfig
from speechssl.models.base import build_model
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import pretrain


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    reset()


def _loss_and_grads(model, batch):
    torch.manual_seed(3)  # same masks / dropout / Gumbel noise in both (inductor: fallback_random)
    out = model.loss(batch)
    out.loss.backward()
    return float(out.loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_model_gives_the_eager_loss_and_gradients():
    # APC with its log-Mel frontend, a GRU context with residuals and the L1 head; small, so that
    # tracing stays quick
    torch.manual_seed(0)
    eager = build_model({"name": "apc", **to_dict(APCConfig(num_layers=2, hidden_size=16))}).train()
    compiled = copy.deepcopy(eager)
    names = compile_model(compiled, backend="aot_eager")
    assert "context" in names and is_compiled(compiled) and not is_compiled(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints unchanged
    batch = speech_batch([8000, 6400])
    a, ga = _loss_and_grads(eager, batch)
    b, gb = _loss_and_grads(compiled, batch)
    assert a == pytest.approx(b, rel=1e-5) and set(ga) == set(gb)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-6, msg=name)


def test_train_compile_switch_trains_like_eager(tmp_path):
    train, dev = make_corpus(tmp_path / "c", n=6), make_corpus(tmp_path / "c", n=2, name="dev", seed=1)
    runs = {}
    for mode in ("eager", "compiled"):
        extra = ["train.compile=true", "train.compile_backend=aot_eager"] if mode == "compiled" else []
        cfg = load_pretrain_config(recipe(tmp_path, train={"max_steps": 3, "valid_every": 0}), extra)
        pretrain(cfg, train, dev, tmp_path / mode)
        runs[mode] = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / mode / "checkpoints"))
        reset()
    a, b = runs["eager"]["model"], runs["compiled"]["model"]
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    losses = [[json.loads(x)["loss"] for x in (tmp_path / m / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["split"] == "train"] for m in ("eager", "compiled")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bad_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compile backend must be one of inductor"):
        compile_model(tiny_model("apc"), backend="tensorrt")
    with pytest.raises(ConfigError, match="compile_backend"):
        load_pretrain_config(recipe(tmp_path), ["train.compile_backend=tensorrt"])


def test_extract_compile_flag_compiles_the_encoder(tmp_path, monkeypatch):
    import speechssl.compilation as compilation
    from speechssl.cli.main import main as cli_main

    compiled = []
    monkeypatch.setattr(compilation, "compile_model", lambda module, *a, **k: compiled.append(module) or [])
    corpus = make_corpus(tmp_path / "c", n=2)
    for flag, expected in (([], 0), (["--compile"], 1)):
        out = tmp_path / f"feats{len(flag)}"
        assert cli_main(["extract", "--encoder", "logmel", "--input", str(corpus), "--out", str(out), "--no-progress",
                         *flag]) == 0
        assert len(compiled) == expected and (out / "index.tsv").is_file()
    assert isinstance(compiled[0], torch.nn.Module)
