"""Label-efficiency sweeps reuse pooled inputs, collate a pooled training set once and step a
hand-written Adam: every result stays bit-identical to pooling, collating and stepping
torch.optim.Adam afresh in every run."""

from __future__ import annotations

import pytest
import torch

from speechssl.downstream import FeatureSet, downstream_config, training
from speechssl.downstream.featurizer import Featurizer, FeaturizerConfig
from speechssl.downstream.heads import build_head
from speechssl.downstream.model import DownstreamModel
from speechssl.downstream.protocols import compute_label_efficiency
from speechssl.downstream.training import HeadAdam, pooled_inputs, reuse_pooled_inputs
from tests.helpers import ConstructedSource

RECS = [{"id": str(i), "cls": "abc"[i % 3]} for i in range(30)]
CFG = downstream_config({"featurizer": {"layer_norm": True}, "head": {"name": "superb_utterance", "hidden_dim": 8},
                         "optim": {"lr": 0.01, "weight_decay": 0.01}, "train": {"max_steps": 12, "batch_size": 4}})


def _utterance(i: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    frames = 3 + i % 5
    return [torch.randn(frames, 6, generator=g) * (k + 1) + i % 3 for k in range(3)]  # 3 layers of other scales


class _Kept(ConstructedSource):
    """In memory, as a feature folder: the same per-layer list object every time an utterance is asked for."""

    def __init__(self):
        self.kept = {r["id"]: _utterance(int(r["id"])) for r in RECS}

    def features(self, records, desc="", skip_failed=False):
        return FeatureSet([r["id"] for r in records], [self.kept[r["id"]] for r in records], ["a", "b", "c"], 160)


class _Fresh(_Kept):
    """New list objects on every call: nothing can be reused."""

    def features(self, records, desc="", skip_failed=False):
        return FeatureSet([r["id"] for r in records], [list(self.kept[r["id"]]) for r in records], ["a", "b", "c"],
                          160)


def _model(layer_norm: bool = True) -> DownstreamModel:
    torch.manual_seed(0)
    return DownstreamModel(Featurizer(["a", "b", "c"], FeaturizerConfig(layer_norm=layer_norm)),
                           build_head({"name": "superb_utterance", "hidden_dim": 8}, 6, 3), ["a", "b", "c"], {})


def _runs(result) -> list:
    return [(r.shots, r.seed, r.test, r.layer_weights) for r in result.runs]


def test_sweep_scores_equal_runs_that_pool_collate_and_step_torch_adam_afresh(tmp_path, monkeypatch, one_thread):
    args = (RECS[:18], None, RECS[18:], "cls", CFG, [1, 2, 5], [0, 1, 2])
    fast = compute_label_efficiency({"x": _Kept()}, *args, tmp_path / "fast", progress=False)
    # the code before the fast path: every run pools its utterances, collates every step, torch.optim.Adam
    monkeypatch.setattr(training, "_pooled_rows", lambda pooled, layer_index: None)
    monkeypatch.setattr(training, "HeadAdam", torch.optim.Adam)
    slow = compute_label_efficiency({"x": _Fresh()}, *args, tmp_path / "slow", progress=False)
    assert _runs(fast) == _runs(slow)
    assert len({r.test["accuracy"] for r in fast.runs}) > 1  # the runs do differ from one another


def test_reused_pooled_inputs_are_those_of_the_utterance_layers_and_normalisation(one_thread):
    feats = [_utterance(i) for i in range(6)]
    others = [_utterance(i + 100) for i in range(6)]
    plain, normed = _model(layer_norm=False), _model()
    direct = {(name, tuple(index)): pooled_inputs(model, feats, index)[0]
              for name, model in (("plain", plain), ("normed", normed)) for index in ([0, 1, 2], [2, 0])}
    direct_others = pooled_inputs(normed, others, [0, 1, 2])[0]
    with reuse_pooled_inputs():
        for _ in range(2):  # the second pass is served from what the first kept
            for (name, index), expected in direct.items():
                got = pooled_inputs(plain if name == "plain" else normed, feats, list(index))[0]
                assert all(torch.equal(a, b) for u, v in zip(got, expected) for a, b in zip(u, v))
            got = pooled_inputs(normed, others, [0, 1, 2])[0]
            assert all(torch.equal(a, b) for u, v in zip(got, direct_others) for a, b in zip(u, v))
        # kept results are handed back as they are, not recomputed
        assert pooled_inputs(normed, feats, [0, 1, 2])[0][0][0] is pooled_inputs(normed, feats, [0, 1, 2])[0][0][0]
    assert training._POOLED is None  # nothing outlives the block


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_head_adam_steps_exactly_as_torch_adam(weight_decay):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = HeadAdam(a, lr=0.03, betas=(0.8, 0.95), weight_decay=weight_decay)
    theirs = torch.optim.Adam(b, lr=0.03, betas=(0.8, 0.95), weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for step in range(60):
        grads = [torch.randn(p.shape, generator=g) * 10 ** (step % 4 - 2) for p in a]
        for params, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            for i, (p, grad) in enumerate(zip(params, grads)):
                if not (i == 2 and step % 3):  # the last parameter only has a gradient every third step
                    p.grad = grad.clone()
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(a, b)), step
    ours.zero_grad()
    assert all(p.grad is None for p in a)
