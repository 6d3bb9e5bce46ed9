"""SimCLR / COLA: NT-Xent, bilinear contrast, the negative queue, triplet mining, alignment/uniformity,
the model's views and features, and a short pretraining that resumes bit-exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_corpus, recipe, speech_batch

from speechssl.config import ConfigError, to_dict
from speechssl.models import build_model
from speechssl.models.simclr import simclr_tiny
from speechssl.modules import siamese_losses as L
from speechssl.train.config import load_pretrain_config
from speechssl.train.diagnostics import embedding_health, health_warnings
from speechssl.train.trainer import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SMALL = {"channels": 16, "kernels": [3, 3], "dilations": [1, 2], "embed_dim": 16, "projector": [16, 8],
         "frontend": {"name": "logmel", "n_mels": 20, "cmvn": "utterance"}, "crop_seconds": 0.2,
         "augment": {"waveform": {"gain": {}, "noise": {}}, "spectrogram": {"time_mask": {}}}}


def test_nt_xent_matches_a_hand_computation_and_counts_negatives():
    g = torch.Generator().manual_seed(0)
    za, zb, queue = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    out = L.nt_xent(za, zb, 0.5, queue)
    z = F.normalize(torch.cat([za, zb]), dim=1)
    q = F.normalize(queue, dim=1)
    losses = []
    for i in range(6):
        pos = (i + 3) % 6
        cands = [j for j in range(6) if j != i]
        logits = torch.stack([z[i] @ z[j] for j in cands] + [z[i] @ k for k in q]) / 0.5
        losses.append(-(logits[cands.index(pos)] - torch.logsumexp(logits, 0)))
    assert float(out.loss) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
    assert out.num_negatives == 2 * 3 - 2 + 5
    same = torch.eye(4)[:3]
    assert L.nt_xent(same, same, 0.1).accuracy == 1.0


def test_false_negative_handling_matches_the_published_formulas():
    """Chuang et al. 2020 (debias) and Huynh et al. 2022 (eliminate / attract) on one logits matrix:
    rows 0 and 1, positive in column 0, column 3 of row 0 not a candidate (-inf)."""
    t = 0.5
    logits = torch.tensor([[1.0, 1.8, -0.4, float("-inf"), 0.2], [0.6, -1.2, 1.4, 0.0, -0.6]]) / t
    targets = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, targets)
    assert torch.allclose(L.contrast_loss(logits, targets, t), ce)
    assert torch.allclose(L.contrast_loss(logits, targets, t, "eliminate", k=0), ce)
    # debias with tau_plus 0.25 (M = 3 and 4 negatives)
    expect = []
    for row, m in ((logits[0], 3), (logits[1], 4)):
        neg = row[1:].exp().sum()
        ng = max(float((neg - 0.25 * m * row[0].exp()) / 0.75), m * math.exp(-1 / t))
        expect.append(math.log(math.exp(float(row[0])) + ng) - float(row[0]))
    assert float(L.contrast_loss(logits, targets, t, "debias", tau_plus=0.25)) == pytest.approx(sum(expect) / 2)
    assert torch.allclose(L.contrast_loss(logits, targets, t, "debias", tau_plus=0.0), ce)  # the floor is inactive
    # k = 1: the most similar negative (column 1 of row 0, column 2 of row 1) is a false negative
    lsm = logits.log_softmax(1)
    elim = torch.stack([-(logits[0, 0] - torch.logsumexp(logits[0, [0, 2, 4]], 0)),
                        -(logits[1, 0] - torch.logsumexp(logits[1, [0, 1, 3, 4]], 0))]).mean()
    assert torch.allclose(L.contrast_loss(logits, targets, t, "eliminate", k=1), elim)
    attract = -((lsm[0, 0] + lsm[0, 1]) / 2 + (lsm[1, 0] + lsm[1, 2]) / 2) / 2
    assert torch.allclose(L.contrast_loss(logits, targets, t, "attract", k=1), attract)
    assert math.isfinite(float(L.contrast_loss(logits, targets, t, "attract", k=9)))  # k capped at 3 negatives
    with pytest.raises(ValueError, match="false_negatives"):
        L.contrast_loss(logits, targets, t, "drop")


def test_key_contrast_passes_false_negative_handling_through():
    """MoCo's query-key loss: the same false-negative handling as contrast_loss on its logits."""
    torch.manual_seed(0)
    q, keys, queue = torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 8)
    logits = torch.cat([F.normalize(q, dim=1) @ F.normalize(keys, dim=1).T,
                        F.normalize(q, dim=1) @ F.normalize(queue, dim=1).T], 1) / 0.2
    targets = torch.arange(4)
    for fn, kw in (("none", {}), ("eliminate", {"k": 2}), ("attract", {"k": 2}), ("debias", {"tau_plus": 0.1})):
        out = L.key_contrast(q, keys, 0.2, queue, fn, **kw)
        assert torch.allclose(out.loss, L.contrast_loss(logits, targets, 0.2, fn, **kw)), fn
        assert out.num_negatives == 3 + 5


def test_model_with_a_queue_and_false_negative_handling():
    batch = speech_batch([6000, 6000, 5000])
    for fn in ({"false_negatives": "debias", "tau_plus": 0.1}, {"false_negatives": "eliminate", "false_negative_k": 2},
               {"false_negatives": "attract", "false_negative_k": 2}):
        torch.manual_seed(0)
        model = build_model({"name": "simclr", **SMALL, "queue_size": 8, "momentum": 0.9,
                             "momentum_loss": "simclr", **fn}).train()
        model.loss(batch)
        out = model.loss(batch)  # the queue holds 3 keys: 4 + 3 negatives
        assert out.metrics["num_negatives"] == 7 and math.isfinite(float(out.loss.detach()))
        out.loss.backward()
    with pytest.raises(ConfigError, match="false_negatives"):
        load_pretrain_config_from({"name": "simclr", "false_negatives": "drop"})
    with pytest.raises(ConfigError, match="false_negatives"):
        load_pretrain_config_from({"name": "simclr", "objective": "cola", "false_negatives": "debias"})
    with pytest.raises(ConfigError, match="tau_plus"):
        load_pretrain_config_from({"name": "simclr", "false_negatives": "debias", "tau_plus": 1.0})


def test_bilinear_contrast_and_queue():
    z = torch.eye(4) * 3
    out = L.bilinear_contrast(z, z, torch.eye(4), queue=torch.zeros(2, 4))
    assert out.accuracy == 1.0 and out.num_negatives == 3 + 2
    assert float(out.loss) < float(L.bilinear_contrast(z, z.flip(0), torch.eye(4)).loss)
    queue = L.NegativeQueue(5, 2)
    assert queue.negatives().shape == (0, 2)
    queue.push(torch.arange(6.0).reshape(3, 2))
    queue.push(torch.arange(6.0, 12.0).reshape(3, 2))  # wraps: the oldest key is overwritten
    assert int(queue.filled) == 5 and int(queue.pointer) == 1
    assert queue.keys[:, 0].tolist() == [10.0, 2.0, 4.0, 6.0, 8.0]
    assert set(queue.state_dict()) == {"keys", "pointer", "filled"}


def test_triplet_semi_hard_mining():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    b = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, -0.1]])
    out = L.triplet_semi_hard(a, b, margin=0.5)
    assert out.accuracy == 1.0 and out.num_negatives == 2
    assert float(out.loss) == 0.0  # every negative is farther than the positive by more than the margin
    swapped = L.triplet_semi_hard(a, b.flip(0), margin=0.5)
    assert float(swapped.loss) > 0.5 and swapped.accuracy < 1.0
    with pytest.raises(ValueError, match="at least 2"):
        L.triplet_semi_hard(a[:1], b[:1], 0.5)


def test_alignment_uniformity_and_embedding_health():
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    align, uniform = L.alignment_uniformity(z, z)
    assert align == pytest.approx(0.0, abs=1e-6) and uniform < -1.0
    _, collapsed = L.alignment_uniformity(torch.ones(8, 4), torch.ones(8, 4))
    assert collapsed == pytest.approx(0.0, abs=1e-6)
    ok, bad = embedding_health(z), embedding_health(torch.ones(64, 8) + 1e-4 * z[:, :1])
    assert ok["embed_eff_rank"] > 6 and bad["embed_eff_rank"] < 1.5
    warnings = health_warnings({"step": 1, **bad})
    assert "embed_eff_rank" in warnings and "embed_std_mean" in warnings
    assert not health_warnings({"step": 1, **ok})


def test_model_views_loss_metrics_and_frozen_features():
    torch.manual_seed(0)
    model = build_model({"name": "simclr", **SMALL, "queue_size": 8, "min_gap_seconds": 0.05})
    model.train()
    batch = speech_batch([8000, 7000, 6000])
    out = model.loss(batch)
    assert {"loss", "acc", "num_negatives", "align", "uniform", "embed_eff_rank", "queue_fill"} <= set(out.metrics)
    assert out.metrics["num_negatives"] == 4 and out.metrics["queue_fill"] == pytest.approx(3 / 8)
    out.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert model.loss(batch).metrics["num_negatives"] == 4 + 3  # the queue's keys join the batch negatives
    model.eval()
    with torch.no_grad():
        enc = model.encode(batch["wavs"], batch["lengths"])
        single = model.encode(batch["wavs"][2:, :6000], batch["lengths"][2:])
    assert enc.layer_names == ["latent", "layer_1", "context"] and enc.frame_shift == 160
    for full, one in zip(enc.hidden_states, single.hidden_states):
        torch.testing.assert_close(full[2, : int(single.lengths[0])], one[0], atol=1e-5, rtol=1e-5)
    emb = enc.layer("context")
    assert torch.equal(emb[0, 0], emb[0, int(enc.lengths[0]) - 1]) and float(emb[2, int(enc.lengths[2]):].abs().sum()) == 0


def test_momentum_encoder_gives_the_keys_and_stays_out_of_the_release(tmp_path):
    from speechssl.upstream.release import load_released_model, save_released_encoder

    torch.manual_seed(0)
    model = build_model({"name": "simclr", **SMALL, "queue_size": 8, "momentum": 0.9}).train()
    batch = speech_batch([6000, 6000, 5000])
    out = model.loss(batch)
    assert out.metrics["num_negatives"] == 2 and out.metrics["queue_fill"] == pytest.approx(3 / 8)
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.step()
    before = model.teacher.module["encoder"].pool.weight.clone()
    model.step_update(1)
    student, teacher = model.encoder.pool.weight, model.teacher.module["encoder"].pool.weight
    torch.testing.assert_close(teacher, 0.9 * before + 0.1 * student.detach())
    assert model.loss(batch).metrics["num_negatives"] == 2 + 3
    model.eval()
    loaded = load_released_model(save_released_encoder(model, tmp_path / "enc"))
    assert not any(k.startswith("teacher.") for k in loaded.released_state_dict())
    with torch.no_grad():
        a, b = model.encode(batch["wavs"], batch["lengths"]), loaded.encode(batch["wavs"], batch["lengths"])
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))


def test_momentum_keys_fill_the_queue_of_a_symmetric_nt_xent():
    """momentum_loss simclr: both online views contrast with each other (2N-2 batch negatives) and the
    queue holds the momentum encoder's keys of view b, not the online ones."""
    torch.manual_seed(0)
    model = build_model({"name": "simclr", **SMALL, "queue_size": 8, "momentum": 0.9,
                         "momentum_loss": "simclr"}).train()
    batch = speech_batch([6000, 6000, 5000])
    out = model.loss(batch)
    assert out.metrics["num_negatives"] == 2 * 3 - 2 and out.metrics["queue_fill"] == pytest.approx(3 / 8)
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    with torch.no_grad():  # the teacher moved away from the student: the stored keys are the teacher's
        for p in model.teacher.parameters():
            p.add_(0.1)
    torch.manual_seed(1)
    model.loss(batch)
    torch.manual_seed(1)
    feats, frames = model.views(batch["wavs"], batch["lengths"])
    with torch.no_grad():
        keys = model.teacher.module["projector"](model.teacher.module["encoder"](feats[3:], frames[3:])[1])
        online = model.projector(model.encoder(feats[3:], frames[3:])[1])
    stored = model.queue.keys[3:6]
    assert torch.allclose(stored, keys, atol=1e-5) and not torch.allclose(stored, online, atol=1e-3)
    assert model.loss(batch).metrics["num_negatives"] == 4 + 6
    with pytest.raises(ConfigError, match="momentum_loss"):
        load_pretrain_config_from({"name": "simclr", "momentum": 0.9, "momentum_loss": "byol"})


def test_objectives_and_config_errors():
    batch = speech_batch([6000, 6000, 6000])
    for objective in ("cola", "triplet", "barlow"):
        torch.manual_seed(0)
        model = build_model({"name": "simclr", **SMALL, "objective": objective}).train()
        loss = model.loss(batch).loss
        assert math.isfinite(float(loss.detach()))
        loss.backward()
    with pytest.raises(ConfigError, match="queue"):
        load_pretrain_config_from({"name": "simclr", "objective": "barlow", "queue_size": 4})
    with pytest.raises(ConfigError, match="momentum"):
        load_pretrain_config_from({"name": "simclr", "objective": "cola", "momentum": 0.99})
    with pytest.raises(ConfigError, match="temperature"):
        load_pretrain_config_from({"name": "simclr", "temperature": 0})
    assert to_dict(simclr_tiny())["objective"] == "ntxent"


def load_pretrain_config_from(model: dict):
    from speechssl.train.config import PretrainConfig

    try:
        return PretrainConfig(model=model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@pytest.mark.parametrize("objective", ["ntxent", "triplet"])
def test_pretraining_resumes_bit_exactly(tmp_path, objective):
    """Augmentation draws, the queue and the mixup memory all resume: 3 + 3 steps == 6 steps (SimCLR with
    its queue; triplet, the demo's third view-based objective, without one)."""
    train = make_corpus(tmp_path / "corpus", n=8, seconds=(0.5, 0.7))
    queue = {"queue_size": 16, "momentum": 0.9} if objective == "ntxent" else {"queue_size": 0, "momentum": None}
    model = {"name": "simclr", **SMALL, "objective": objective, **queue,
             "augment": {"waveform": {"noise": {"p": 0.5}, "speed": {"p": 0.5}, "gain": {}},
                         "spectrogram": {"mixup": {"memory_size": 8, "memory_frames": 10}, "time_mask": {}}}}
    sections = {"model": model, "data": {"max_batch_seconds": 2.0, "crop_seconds": 0.5, "min_seconds": 0.3},
                "optim": {"name": "adam", "lr": 1e-3, "schedule": "constant"},
                "train": {"max_steps": 6, "log_every": 1, "valid_every": 0, "ckpt_every_steps": 3, "plot": False}}
    cfg = load_pretrain_config(recipe(tmp_path, **sections))
    ref = pretrain(cfg, train, None, tmp_path / "ref")
    first = pretrain(load_pretrain_config(recipe(tmp_path, **sections), ["train.max_steps=3"]), train, None,
                     tmp_path / "split")
    resumed = pretrain(cfg, train, None, tmp_path / "split")
    assert (ref.step, first.step, resumed.step) == (6, 3, 6)
    a = torch.load(ref.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    expected = {"queue.keys", "spec_augment.mixup.memory", "teacher.module.encoder.pool.weight"}
    assert (expected if objective == "ntxent" else {"spec_augment.mixup.memory"}) <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [[json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["split"] == "train"] for d in ("ref", "split")]
    assert losses[0] == losses[1]
