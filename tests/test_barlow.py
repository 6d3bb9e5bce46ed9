"""Barlow Twins: the loss against a hand computation, its optimum, the global-batch statistics under
DDP (2 gloo processes), and the registered family (config defaults, release as ``barlow``)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port, speech_batch

from speechssl.models import build_model
from speechssl.models.barlow import BarlowConfig, BarlowModel, barlow_tiny
from speechssl.modules.siamese_losses import barlow_twins
from speechssl.upstream.release import load_released_model, save_released_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _reference(za: torch.Tensor, zb: torch.Tensor, lambd: float) -> float:
    za = (za - za.mean(0)) / (za.var(0, unbiased=False) + 1e-5).sqrt()
    zb = (zb - zb.mean(0)) / (zb.var(0, unbiased=False) + 1e-5).sqrt()
    c = za.T @ zb / za.shape[0]
    total = 0.0
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            total += (1 - c[i, j]) ** 2 if i == j else lambd * c[i, j] ** 2
    return float(total)


def test_loss_matches_the_formula_and_is_minimal_for_decorrelated_identical_views():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    assert float(barlow_twins(za, zb, 5e-3).loss) == pytest.approx(_reference(za, zb, 5e-3), rel=1e-4)
    # identical views with uncorrelated dimensions (orthogonal columns): C = I, loss ~ 0
    q, _ = torch.linalg.qr(torch.randn(16, 4, generator=g) - 0)
    q = q - q.mean(0)
    assert float(barlow_twins(q, q, 5e-3).loss) < 0.2
    # identical but redundant dimensions (all equal): on-diagonal 0, off-diagonal lambda x D(D-1)
    same = torch.randn(16, 1, generator=g).repeat(1, 4)
    assert float(barlow_twins(same, same, 0.5).loss) == pytest.approx(0.5 * 12, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins(za[:1], zb[:1], 5e-3)


def _ddp_worker(rank: int, port: int, za: torch.Tensor, zb: torch.Tensor, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        a = za[rank * 4: rank * 4 + 4].clone().requires_grad_(True)
        out = barlow_twins(a, zb[rank * 4: rank * 4 + 4], 5e-3)
        out.loss.backward()
        queue.put((rank, float(out.loss.detach()), a.grad.tolist()))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_uses_the_global_batch():
    g = torch.Generator().manual_seed(1)
    za, zb = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    ctx = mp.get_context("fork")  # no re-import of torch in the children: about a second
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(rank, port, za, zb, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in range(2))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    full = za.clone().requires_grad_(True)
    want = barlow_twins(full, zb, 5e-3)
    want.loss.backward()
    for rank, loss, grad in results:
        assert loss == pytest.approx(float(want.loss.detach()), rel=1e-5)  # every rank sees the global loss
        # the gather's backward sums the (identical) losses of both ranks: each rank holds 2 x the global
        # gradient of its rows, and DDP's average over the 2 ranks makes the parameters' gradient the global one
        torch.testing.assert_close(torch.tensor(grad), 2 * full.grad[rank * 4: rank * 4 + 4], rtol=1e-4, atol=1e-6)


def test_family_defaults_training_step_and_release(tmp_path):
    cfg = barlow_tiny()
    assert isinstance(cfg, BarlowConfig) and cfg.objective == "barlow" and len(cfg.projector) == 3
    torch.manual_seed(0)
    model = build_model({"name": "barlow", "channels": 16, "kernels": [3], "dilations": [1], "embed_dim": 16,
                         "projector": [32, 32, 32], "frontend": {"name": "logmel", "n_mels": 20, "cmvn": "utterance"},
                         "crop_seconds": 0.2, "augment": {"waveform": {"gain": {}}}})
    assert isinstance(model, BarlowModel)
    model.train()
    out = model.loss(speech_batch([6000, 5000, 4000, 6000]))
    assert "acc" not in out.metrics and out.metrics["num_negatives"] == 0
    out.loss.backward()
    model.eval()
    loaded = load_released_model(save_released_encoder(model, tmp_path / "enc"))
    assert type(loaded) is BarlowModel and loaded.config.objective == "barlow"


@pytest.mark.parametrize("family", ["simclr", "barlow"])
def test_demo_recipe_releases_layers_of_one_size_that_the_demo_head_sums_all(family):
    """embed_dim = channels in the demo recipes: the pooled ``context`` and the frame layers have one size,
    so the demo head's ``layers: all`` weighs every layer (with embed_dim 256 only ``context`` was kept)."""
    from pathlib import Path

    import yaml

    from speechssl.upstream.layers import LayerSelection

    root = Path(__file__).resolve().parents[1] / "recipes"
    model = build_model(yaml.safe_load((root / "pretrain" / f"{family}_demo.yaml").read_text())["model"]).eval()
    with torch.no_grad():
        out = model.encode(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    sizes = [h.shape[-1] for h in out.hidden_states]
    selection = LayerSelection.parse(yaml.safe_load((root / "downstream" / "demo.yaml").read_text())
                                     ["featurizer"]["layers"], "featurizer.layers")
    chosen, dropped = selection.for_weighted_sum(out.layer_names, sizes)
    assert out.layer_names == ["latent", "layer_1", "layer_2", "layer_3", "context"]
    assert chosen == out.layer_names and dropped["size"] == [] and len(set(sizes)) == 1
