"""data2vec 2.0 / 1.0: targets, the unmasked-only student and its decoder, clone_batch, collapse warning,
a tiny pretraining run with bit-exact resume and a released encoder, Hugging Face Data2VecAudioModel interop."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import make_corpus, recipe, speech_batch

from speechssl.config import to_dict
from speechssl.models import build_model
from speechssl.models.data2vec2 import data2vec2_base, data2vec2_tiny, data2vec_base, masked_instance_norm
from speechssl.modules.padding import lengths_to_mask
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import pretrain
from speechssl.upstream import load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# A very small model: the tests check arithmetic, not learning.
SMALL = dict(embed_dim=32, num_layers=3, num_heads=2, ffn_dim=64, pos_conv_groups=4, decoder_dim=16, decoder_groups=4,
             top_k=2, clone_batch=3)


def small(**overrides):
    torch.manual_seed(0)
    return build_model({"name": "data2vec2", **to_dict(data2vec2_tiny()), **SMALL, **overrides})


def test_presets():
    base, v1 = data2vec2_base(), data2vec_base()
    assert (base.top_k, base.mask_span, base.clone_batch, base.decoder_dim, base.decoder_layers, base.decoder_kernel,
            base.ema_start, base.ema_end, base.ema_anneal_steps) == (8, 5, 8, 384, 4, 7, 0.999, 0.99999, 75000)
    assert (v1.variant, v1.mask_span, v1.ema_end, v1.ema_anneal_steps) == ("data2vec", 10, 0.9999, 30000)
    with pytest.raises(ValueError, match=r"model.top_k 5 exceeds model.num_layers 3"):
        small(top_k=5)


def test_targets_are_the_average_of_the_instance_normalised_top_k_ffn_outputs():
    model = small().train()
    b = speech_batch([9000, 6000])
    lengths = model.check_lengths(b["wavs"], b["lengths"])
    feats, n = model.conv_features(b["wavs"], lengths)
    latent = model.feature_projection(feats)
    valid = lengths_to_mask(n, latent.shape[1])
    y, stats = model.targets(b["wavs"], lengths, latent, valid)
    _, ffn = model.teacher.module(latent, ~valid, collect="ffn")
    want = sum(masked_instance_norm(f, valid) for f in ffn[-2:]) / 2
    torch.testing.assert_close(y, want)
    assert float(y[~valid].abs().max()) == 0.0
    x = 3.0 + 2.0 * torch.randn(2, 20, 8)
    x[1, 12:] = 1e4  # padding: ignored by the statistics
    v = torch.ones(2, 20, dtype=torch.bool)
    v[1, 12:] = False
    normed = masked_instance_norm(x, v)
    torch.testing.assert_close(normed[1, :12], torch.nn.functional.instance_norm(x[1:, :12].transpose(1, 2)).transpose(1, 2)[0])
    assert float(normed[1, 12:].abs().max()) == 0.0
    assert {"teacher_var", "target_var_layer_2", "target_var_layer_3"} <= set(stats)
    # the teacher does not depend on dropout: same targets twice in training mode
    assert torch.equal(y, model.targets(b["wavs"], lengths, latent, valid)[0])


def test_target_input_weight_mixes_in_the_teachers_instance_normalised_input():
    b = speech_batch([9000, 6000])
    for ema_feature_encoder in (False, True):
        model = small(target_input_weight=0.25, ema_feature_encoder=ema_feature_encoder).train()
        lengths = model.check_lengths(b["wavs"], b["lengths"])
        feats, n = model.conv_features(b["wavs"], lengths)
        latent = model.feature_projection(feats)
        valid = lengths_to_mask(n, latent.shape[1])
        y, stats = model.targets(b["wavs"], lengths, latent, valid)
        teacher, z = model.teacher.module, latent
        if ema_feature_encoder:  # the teacher's own feature encoder and projection give its input
            inputs, input_lengths = model.frontend(b["wavs"], lengths)
            z = teacher["feature_projection"](teacher["feature_encoder"](inputs.transpose(1, 2), input_lengths)[0])
        _, ffn = (teacher["context"] if ema_feature_encoder else teacher)(z, ~valid, collect="ffn")
        mean = sum(masked_instance_norm(f, valid) for f in ffn[-2:]) / 2
        torch.testing.assert_close(y, 0.75 * mean + 0.25 * masked_instance_norm(z, valid))
        assert "target_var_input" in stats and float(y[~valid].abs().max()) == 0.0
        assert torch.isfinite(model.loss(b).loss)
    with pytest.raises(ValueError, match=r"model.target_input_weight must be in \[0, 1\]"):
        small(target_input_weight=1.5)


def test_student_sees_only_unmasked_frames_and_clones_share_one_teacher_pass(monkeypatch):
    model = small(decoder_input_dropout=0.0, dropout=0.0, mask_noise_std=0.0).train()
    b = speech_batch([12000, 12000])
    seen = {"teacher": [], "blocks": []}
    teacher_forward, blocks = model.teacher.module.forward, model.context.blocks
    monkeypatch.setattr(model.teacher.module, "forward",
                        lambda z, *a, **k: seen["teacher"].append(z.shape) or teacher_forward(z, *a, **k))
    monkeypatch.setattr(model.context, "blocks", lambda x, *a, **k: seen["blocks"].append(x.shape) or blocks(x, *a, **k))
    out = model.loss(b)
    frames = int(model.num_frames(torch.tensor(12000)))
    assert seen["teacher"] == [torch.Size([2, frames, 32])]  # one teacher pass for 3 masks per utterance
    (student_shape,) = seen["blocks"]
    assert student_shape[0] == 6 and student_shape[1] < frames  # only the unmasked frames
    assert 0.2 < out.metrics["mask_ratio"] < 0.7
    # predictions do not depend on what the masked frames held
    latent = torch.randn(2, frames, 32)
    valid = torch.ones(2, frames, dtype=torch.bool)
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[0, 3:9] = mask[1, 10:14] = True
    model.eval()
    pred, student = model._student_data2vec2(latent, mask, valid)
    changed = latent.clone()
    changed[mask] = 100.0
    pred2, _ = model._student_data2vec2(changed, mask, valid)
    torch.testing.assert_close(pred, pred2)
    assert student.shape == (2 * frames - 10, 32)


def test_every_parameter_learns_and_the_teacher_does_not(monkeypatch):
    for variant in ("data2vec2", "data2vec"):
        model = small(variant=variant, clone_batch=2 if variant == "data2vec2" else 1).train()
        out = model.loss(speech_batch([9000, 7000]))
        out.loss.backward()
        assert out.loss.dtype == torch.float32 and out.loss.requires_grad
        for name, p in model.named_parameters():
            assert (p.grad is not None) == (not name.startswith("teacher.")), name
        assert variant == "data2vec2" or hasattr(model, "mask_emb")


def test_data2vec_teacher_copies_the_positional_conv():
    model = small(variant="data2vec", clone_batch=1)
    with torch.no_grad():
        for p in model.context.parameters():
            p.add_(0.1)
    model.step_update(1)
    t, s = model.teacher.module, model.context
    assert torch.equal(t.pos_conv.layers[0].conv.weight, s.pos_conv.layers[0].conv.weight)
    assert not torch.equal(t.layers[0].ffn.fc1.weight, s.layers[0].ffn.fc1.weight)


def test_collapse_is_a_warning(caplog):
    model = small()
    caplog.set_level(logging.WARNING)
    model._warn_on_collapse({"loss": 0.01, "target_var": 1e-7, "teacher_var": 0.5, "student_var": 0.5})
    assert "representation collapse" in caplog.text and "target_var" in caplog.text


# ---------------------------------------------------------------- training
def test_tiny_run_learns_resumes_bit_exactly_and_releases_the_student(tmp_path):
    train = make_corpus(tmp_path / "data", n=8, seconds=(0.5, 0.8))
    sections = dict(model={"name": "data2vec2", **to_dict(data2vec2_tiny()), **SMALL},
                    data={"max_batch_seconds": 2.0, "crop_seconds": 0.5, "min_seconds": 0.3},
                    optim={"lr": 2e-3, "warmup_steps": 2, "schedule": "constant"},
                    train={"max_steps": 8, "log_every": 1, "valid_every": 0, "ckpt_every_steps": 100, "plot": False})
    ref = pretrain(load_pretrain_config(recipe(tmp_path, **sections)), train, None, tmp_path / "ref")
    first = pretrain(load_pretrain_config(recipe(tmp_path, **sections), ["train.max_steps=4"]), train, None,
                     tmp_path / "exp")
    second = pretrain(load_pretrain_config(recipe(tmp_path, **sections)), train, None, tmp_path / "exp")
    assert first.step == 4 and ref.step == second.step == 8
    a = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "ref" / "checkpoints"))["model"]
    b = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "exp" / "checkpoints"))["model"]
    assert int(a["teacher.last_step"]) == 8
    for k in a:
        assert torch.equal(a[k], b[k]), k
    records = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("split") == "train"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert all(k in records[-1] or r.get("split") != "train" for r in records[-1:] for k in ("target_var", "ema_decay"))
    from safetensors.torch import load_file

    released = load_file(str(tmp_path / "ref" / "encoder" / "model.safetensors"))
    assert not any(k.startswith("teacher.") for k in released)
    assert torch.equal(released["context.layers.0.ffn.fc1.weight"], a["context.layers.0.ffn.fc1.weight"])
    enc = load_encoder(str(tmp_path / "ref" / "encoder"))
    assert enc.layer_names == ["latent", "layer_1", "layer_2", "layer_3", "context"]


# ---------------------------------------------------------------- Hugging Face
def _hf_model(**kw):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, conv_dim=[16, 16],
        conv_kernel=[10, 3], conv_stride=[5, 2], conv_bias=True, num_conv_pos_embeddings=3, conv_pos_kernel_size=5,
        num_conv_pos_embedding_groups=4, mask_time_prob=0.3, **kw)
    torch.manual_seed(0)
    model = transformers.Data2VecAudioModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _compare(ours, hf, wavs):
    with torch.no_grad():
        theirs = hf(wavs, output_hidden_states=True)
        mine = ours.encode(wavs, torch.full((wavs.shape[0],), wavs.shape[1]))
    for k in range(1, len(theirs.hidden_states)):
        torch.testing.assert_close(mine.layer(f"layer_{k}"), theirs.hidden_states[k], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine.layer("context"), theirs.last_hidden_state, atol=1e-5, rtol=1e-4)


def test_hf_data2vec_audio_import_gives_identical_hidden_states_and_exports_back(tmp_path):
    from transformers import Data2VecAudioModel

    from speechssl.upstream.data2vec_hf import export_hf_data2vec, from_hf_data2vec

    hf = _hf_model()
    ours = from_hf_data2vec(hf)
    assert ours.config.variant == "data2vec" and ours.config.pos_conv_depth == 3
    assert torch.equal(ours.mask_emb, hf.masked_spec_embed.detach())
    assert torch.equal(ours.teacher.module.layers[1].ffn.fc2.weight, ours.context.layers[1].ffn.fc2.weight)
    wavs = torch.randn(2, 4000)
    _compare(ours, hf, wavs)
    export_hf_data2vec(ours, tmp_path / "hf")
    back = Data2VecAudioModel.from_pretrained(tmp_path / "hf").eval()
    state, want = back.state_dict(), hf.state_dict()
    assert set(state) == set(want)
    for k in want:
        assert torch.equal(state[k], want[k]), k
    again = from_hf_data2vec(tmp_path / "hf")
    _compare(again, hf, wavs)
    # the generic entry points: load_encoder on the folder / the object, speechssl export hf
    from speechssl.upstream.hf_export_encoder import export_hf_encoder

    _compare(load_encoder(str(tmp_path / "hf")).backbone, hf, wavs)
    _compare(load_encoder(hf).backbone, hf, wavs)
    export_hf_encoder(load_encoder(str(tmp_path / "hf")), tmp_path / "hf2")
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["model_type"] == "data2vec-audio"
    with pytest.raises(ValueError, match="model_type 'wav2vec2' is not 'data2vec-audio'"):
        from speechssl.upstream.data2vec_hf import config_from_hf_data2vec

        config_from_hf_data2vec({"model_type": "wav2vec2"})


def test_bf16_autocast_keeps_an_fp32_loss_and_an_fp32_teacher():
    model = small().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(speech_batch([9000, 7000]))
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    model.step_update(1)
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())


def test_teacher_with_its_own_feature_encoder_and_release_teacher(tmp_path):
    model = small(ema_feature_encoder=True, release="teacher").train()
    assert any(k.startswith("teacher.module.feature_encoder.") for k in model.state_dict())
    model.loss(speech_batch([9000, 7000])).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    model.step_update(1)
    released = model.released_state_dict()
    assert not any(k.startswith("teacher.") for k in released)
    for key in ("feature_encoder.layers.0.conv.weight", "context.layers.0.ffn.fc1.weight"):
        assert torch.equal(released[key], model.state_dict()["teacher.module." + key])
        assert not torch.equal(released[key], model.state_dict()[key])


def test_freeze_projection_keeps_the_latent_and_the_teachers_copy_at_init_and_the_loss_unchanged():
    losses, inits = {}, {}
    for freeze in (False, True):
        model = small(freeze_projection=freeze, feature_grad_mult=0.0, ema_feature_encoder=True,
                      release="teacher").train()
        init = inits[freeze] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(5)
        out = model.loss(speech_batch([9000, 7000]))
        out.loss.backward()
        losses[freeze] = float(out.loss.detach())
        assert all((p.grad is None) == freeze for p in model.feature_projection.parameters())
        assert model.context.layers[0].ffn.fc1.weight.grad is not None
        torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1).step()
        model.step_update(1)
        released = model.released_state_dict()
        for key in ("feature_projection.projection.weight", "feature_projection.layer_norm.weight"):
            student, teacher = model.state_dict()[key], model.state_dict()["teacher.module." + key]
            assert torch.equal(student, init[key]) == freeze and torch.equal(teacher, init[key]) == freeze
            assert torch.equal(released[key], teacher)
        assert not torch.equal(released["context.layers.0.ffn.fc1.weight"], init["context.layers.0.ffn.fc1.weight"])
    assert all(torch.equal(inits[True][k], v) for k, v in inits[False].items())  # the random-init control's weights
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)  # same forward pass, same RNG draws


def test_decoder_zero_init_predicts_zero_at_init_and_leaves_every_other_weight_unchanged():
    plain, zero = small(), small(decoder_zero_init=True)
    for key, value in plain.state_dict().items():
        assert torch.equal(zero.state_dict()[key], value) != key.startswith("decoder.proj."), key
    assert not zero.decoder.proj.weight.any() and not zero.decoder.proj.bias.any()
    zero.train()
    torch.manual_seed(5)
    out = zero.loss(speech_batch([9000, 7000]))
    assert out.metrics["pred_var"] == 0.0
    out.loss.backward()  # no gradient reaches the student until the projection has learnt something
    assert not zero.context.layers[0].ffn.fc1.weight.grad.any() and zero.decoder.proj.weight.grad.any()
