"""CPC / modified CPC model: exact lengths, batched == single, metrics, presets, release."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import speech_batch as batch_of

from speechssl.config import ConfigError, to_dict
from speechssl.features.base import num_frames
from speechssl.models import build_model
from speechssl.models.cpc import cpc_modified, cpc_paper, cpc_tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


CONV = [(16, 10, 5), (16, 8, 4), (16, 4, 2), (16, 4, 2), (16, 4, 2)]  # paper strides, 16 channels
VARIANTS = {
    "conv_channel_lstm_transformer": {"norm": "channel", "context": "lstm", "predictor": "transformer",
                                      "negatives": "speaker"},
    "conv_batch_gru_linear": {"norm": "batch", "context": "gru", "predictor": "linear", "negatives": "batch"},
    "frame_transformer": {"encoder": "frame", "frontend": {"name": "logmel", "n_mels": 20, "cmvn": "utterance"},
                          "frame_dim": 16, "context": "transformer", "predictor": "linear",
                          "negatives": "utterance"},
}


def small(**kw) -> torch.nn.Module:
    cfg = {"name": "cpc", "conv_layers": CONV, "hidden_size": 16, "num_heads": 2, "ffn_dim": 32,
           "prediction_steps": 3, "num_negatives": 5, "context_layers": 2, **kw}
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_encode_exact_lengths_and_batched_equals_single(variant):
    model = small(**VARIANTS[variant])
    model.train()
    model.loss(batch_of([6000, 5000], speakers=["a", "b"]))  # batch norm: non-trivial running stats
    lens = [16000, 465, 2705, 7777]
    b = batch_of(lens)
    out = model.encode(b["wavs"], b["lengths"])
    assert model.training
    assert out.layer_names == ["latent", "layer_1", "layer_2", "context"]
    assert out.frame_shift == 160
    rf = 465 if "encoder" not in VARIANTS[variant] else 400
    assert model.receptive_field == rf
    assert out.lengths.tolist() == [num_frames(n, rf, 160) for n in lens]
    for i, n in enumerate(lens):
        single = model.encode(b["wavs"][i : i + 1, :n], b["lengths"][i : i + 1])
        nf = int(out.lengths[i])
        assert single.lengths.tolist() == [nf]
        for hb, hs in zip(out.hidden_states, single.hidden_states):
            torch.testing.assert_close(hb[i, :nf], hs[0], atol=2e-5, rtol=1e-4)
            assert torch.all(hb[i, nf:] == 0)


def test_conv_frame_count_formula():
    model = small()
    assert model.receptive_field == 465 and model.frame_shift == 160
    for n, frames in [(464, 0), (465, 1), (624, 1), (625, 2), (16000, 98)]:
        assert int(model.encoder.out_lengths(torch.tensor([n]))) == frames
        out = model.encode(torch.randn(1, n), torch.tensor([n]))
        assert out.hidden_states[0].shape[1] == frames and int(out.lengths) == frames


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loss_metrics_and_gradients(variant):
    model = small(**VARIANTS[variant])
    out = model.loss(batch_of([9000, 4000, 6000], speakers=["a", "b", "a"]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert set(out.metrics) == {"infonce", "acc", "acc_k1", "acc_k2", "acc_k3"}
    assert out.metrics["acc"] == pytest.approx(sum(out.metrics[f"acc_k{k}"] for k in (1, 2, 3)) / 3)
    assert all(p.grad is not None for p in model.parameters()), "every parameter must get a gradient (DDP)"


def test_speaker_negatives_without_speaker_field_warn_once(caplog):
    model = small(negatives="speaker")
    with caplog.at_level(logging.WARNING, logger="speechssl.models.cpc"):
        model.loss(batch_of([5000, 4000]))
        model.loss(batch_of([5000, 4000]))
    assert sum("no 'speaker' field" in r.message for r in caplog.records) == 1


def test_batch_negatives_are_appended_to_the_group_negatives(monkeypatch):
    import speechssl.models.cpc as cpc_module

    seen = {}

    def capture(pred, z, lengths, neg):
        seen["neg"], seen["frames"], seen["lengths"] = neg, z.shape[1], lengths
        return real(pred, z, lengths, neg)

    real = cpc_module.infonce
    monkeypatch.setattr(cpc_module, "infonce", capture)
    model = small(negatives="utterance", batch_negatives=40)
    torch.manual_seed(1)
    out = model.loss(batch_of([9000, 4000, 6000]))
    out.loss.backward()
    neg, frames = seen["neg"], seen["frames"]
    assert neg.shape[-1] == 5 + 40
    utt = neg // frames  # utterance of every negative
    own = torch.arange(3)[:, None, None]
    valid = torch.arange(frames)[None, :] < seen["lengths"][:, None]
    assert torch.all(utt[..., :5][valid] == own.expand_as(utt[..., :5])[valid])  # the group: own utterance
    assert torch.any(utt[..., 5:][valid] != own.expand_as(utt[..., 5:])[valid])  # the batch: others too
    assert torch.all(neg % frames < seen["lengths"][utt])  # never padding
    with pytest.raises(ConfigError, match="batch_negatives"):
        build_model({"name": "cpc", "batch_negatives": -1})


def test_min_samples():
    model = small(prediction_steps=3)
    assert model.min_samples == 465 + 3 * 160
    # min_samples: K + 1 latent frames, so even step K has a target
    for n, frames in [(model.min_samples, 4), (model.min_samples - 1, 3)]:
        assert int(model.encode(torch.randn(1, n), torch.tensor([n])).lengths) == frames
    model.loss(batch_of([model.min_samples]))
    with pytest.raises(ValueError, match="valid future target"):
        model.loss(batch_of([465 + 159]))  # one frame: nothing to predict


def test_overfit_one_batch():
    model = small(encoder="frame", frontend={"name": "logmel", "n_mels": 20, "cmvn": "utterance"}, frame_dim=16,
                  context="gru", context_layers=1, predictor="linear", negatives="batch")
    b = batch_of([4000, 3000, 3500], seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(25):
        out = model.loss(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    assert out.metrics["acc"] > 1 / 6


def test_preset_parameter_counts():
    def counts(cfg):
        model = build_model({"name": "cpc", **to_dict(cfg)})
        total = sum(p.numel() for p in model.parameters())
        return total, total - sum(p.numel() for p in model.predictor.parameters())

    # SUPERB counts encoder + context: modified CPC 1.84 M
    assert counts(cpc_modified())[1] == 1_843_456
    paper_total, paper_encoder = counts(cpc_paper())
    assert paper_encoder == 5_847_040 and paper_total == 5_847_040 + 12 * (256 * 512 + 512)
    assert counts(cpc_tiny())[0] < 1_000_000


def test_config_errors():
    with pytest.raises(ConfigError, match="num_negatives"):
        build_model({"name": "cpc", "num_negatives": 0})
    with pytest.raises(ConfigError, match=r"conv_layers\[1\]"):
        build_model({"name": "cpc", "conv_layers": [[8, 10, 5], [8, 0, 2]]})
    with pytest.raises(ConfigError, match="negatives"):
        build_model({"name": "cpc", "negatives": "everywhere"})


@pytest.mark.parametrize("norm", ["channel", "none"])
def test_channels_last_conv_stack_equals_the_channels_first_one(norm):
    from speechssl.models.cpc import ConvEncoder

    torch.manual_seed(0)
    enc = ConvEncoder(1, [(16, 10, 5), (16, 8, 4), (16, 4, 2)], norm)
    x = torch.randn(2, 1200, 1, requires_grad=True)
    w = torch.randn(2, 28, 16)
    grads = []
    outs = []
    for path in (enc._channels_last, enc._channels_first):
        x.grad = None
        enc.zero_grad()
        out = path(x)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in enc.parameters()])
    assert outs[0].shape == (2, 28, 16) and outs[0].is_contiguous()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # too short for the last layer: no frames, not an error
    assert enc._channels_last(torch.randn(1, 60, 1)).shape == (1, 0, 16)


@pytest.mark.parametrize("variant", ["conv_batch_gru_linear", "frame_transformer"])
def test_freeze_encoder_keeps_the_latent_at_its_init_and_trains_the_rest(variant):
    b = batch_of([9000, 4000, 6000], speakers=["a", "b", "a"])
    off, on = small(**VARIANTS[variant]), small(**VARIANTS[variant], freeze_encoder=True)
    init = {k: v.clone() for k, v in on.state_dict().items()}
    for k, v in off.state_dict().items():  # the option does not change the init (the control)
        assert torch.equal(v, init[k])
    z0 = on.encode(b["wavs"], b["lengths"]).hidden_states[0]
    opt = torch.optim.Adam([p for p in on.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = on.loss(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert on.training and not on.encoder.training
    assert all(p.grad is None for p in on.encoder.parameters())
    assert all(p.grad is not None for p in [*on.context.parameters(), *on.predictor.parameters()])
    state = on.state_dict()
    for k, v in init.items():  # encoder weights (and batch-norm statistics) unchanged, the rest trained
        assert torch.equal(state[k], v) == k.startswith("encoder."), k
    torch.testing.assert_close(on.encode(b["wavs"], b["lengths"]).hidden_states[0], z0, rtol=0, atol=0)
    assert off.encoder.training and all(p.requires_grad for p in off.parameters())


@pytest.mark.parametrize("context", ["lstm", "transformer"])
def test_stacked_frames_make_one_model_frame_of_four(context):
    """stack_frames 4: four 10 ms log-Mel frames per 40 ms model frame; batched == single, the
    Linear sees the four frames in order, and streaming an LSTM context gives the one-pass frames."""
    model = small(encoder="frame", frontend={"name": "logmel", "n_mels": 20, "cmvn": "none"}, frame_dim=16,
                  stack_frames=4, context=context, context_layers=1, predictor="linear", negatives="batch")
    assert (model.frame_shift, model.receptive_field) == (640, 400 + 3 * 160)
    lens = [16000, 880, 879, 7777]
    b = batch_of(lens)
    out = model.encode(b["wavs"], b["lengths"])
    assert out.frame_shift == 640
    assert out.lengths.tolist() == [num_frames(n, 400, 160) // 4 for n in lens] == [24, 1, 0, 11]
    feats, n = model.frontend(b["wavs"][:1], b["lengths"][:1])
    first = model.encoder.net[0]
    torch.testing.assert_close(out.hidden_states[0][0, 2], model.encoder.net[1:](first(feats[0, 8:12].reshape(-1))))
    for i, n in enumerate(lens):
        if int(out.lengths[i]) == 0:
            continue
        single = model.encode(b["wavs"][i : i + 1, :n], b["lengths"][i : i + 1])
        for hb, hs in zip(out.hidden_states, single.hidden_states):
            torch.testing.assert_close(hb[i, : int(out.lengths[i])], hs[0], atol=2e-5, rtol=1e-4)
    loss = model.loss(batch_of([16000, 12000], speakers=["a", "b"])).loss
    loss.backward()
    assert first.weight.grad.abs().sum() > 0
    if context == "lstm":
        whole = model.encode(b["wavs"][:1], b["lengths"][:1])
        part1, state = model.encode_continued(b["wavs"][:1, : 640 * 10 + 240], 0, 10)
        part2, _ = model.encode_continued(b["wavs"][:1, 640 * 10 :], 0, None, state)
        torch.testing.assert_close(torch.cat([part1.hidden_states[-1], part2.hidden_states[-1]], 1),
                                   whole.hidden_states[-1], atol=2e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="stack_frames"):
        small(stack_frames=2)  # the conv encoder
