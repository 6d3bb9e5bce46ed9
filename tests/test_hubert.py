"""HuBERT: Base preset vs torchaudio, the cosine head, the masked loss with frame targets, MelHuBERT
frames, and a tiny pretraining run from k-means targets with a bit-exact resume."""

from __future__ import annotations

import collections
import json
import shutil

import pytest
import torch
from helpers import make_corpus, recipe, speech_batch, tiny_model

from speechssl.cli.main import main
from speechssl.config import ConfigError, to_dict
from speechssl.models import build_model
from speechssl.models.hubert import CosineHead, hubert_base, hubert_tiny, melhubert_base
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.upstream import load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def targets_for(model, batch, seed=0):
    """Random frame targets [B, T, K] for ``batch`` at the model's frame rate."""
    frames = int(model.num_frames(batch["lengths"]).max())
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, k, (len(batch["lengths"]), frames, 1), generator=g) for k in model.config.num_classes]
    return torch.cat(cols, -1)


def test_base_has_torchaudio_hubert_pretrain_base_shapes_and_parameter_count():
    import torchaudio

    ours = build_model({"name": "hubert", **to_dict(hubert_base())}, init_weights=False)
    theirs = torchaudio.models.hubert_pretrain_base(num_classes=100)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 94_594_176  # + 256 x 100 label embeddings

    def shapes(model, fused_qkv):
        out = collections.Counter()
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if fused_qkv and name.endswith(("qkv.weight", "qkv.bias")):  # ours: one [3D, D] projection
                out[(shape[0] // 3, *shape[1:])] += 3
            else:
                out[shape] += 1
        return out

    assert shapes(ours, True) == shapes(theirs, False)
    recipe_cfg = load_pretrain_config("recipes/pretrain/hubert_base.yaml")
    assert recipe_cfg.model == dataclass_replace(hubert_base(), untie_final_proj=True,
                                                 frontend={"name": "waveform", "normalize": False})
    assert (recipe_cfg.optim.lr, recipe_cfg.optim.warmup_steps, recipe_cfg.model.mask_prob * 10) == (5e-4, 32000, 0.8)


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_cosine_head_is_cosine_over_temperature_per_target_set():
    torch.manual_seed(0)
    head = CosineHead(16, [5, 7], final_dim=8, temperature=0.1)
    x = torch.randn(4, 16)
    logits = head(x)
    assert [tuple(v.shape) for v in logits] == [(4, 5), (4, 7)]
    proj = head.final_proj(x)
    emb = head.label_embeddings.split([5, 7])
    for lg, e in zip(logits, emb):
        want = torch.nn.functional.cosine_similarity(proj[:, None], e[None], dim=-1) / 0.1
        torch.testing.assert_close(lg, want)
    untied = CosineHead(16, [5, 7], final_dim=8, untie=True)
    assert untied.final_proj.weight.shape == (16, 16) and len(untied(x)) == 2


def test_loss_counts_masked_frames_only_unless_unmasked_weight():
    model = tiny_model("hubert").train()
    batch = speech_batch([16000, 12000])
    batch["targets"] = targets_for(model, batch)
    torch.manual_seed(3)
    out = model.loss(batch)
    assert out.metrics["unmasked_ce"] == 0.0 and 0.1 < out.metrics["mask_ratio"] < 0.7
    for key in ("acc", "acc_target_0", "code_perplexity_0", "codebook_usage", "masked_ce", "feature_pen"):
        assert key in out.metrics, key
    # the same masks (same RNG state) with targets changed on every frame: the loss changes
    torch.manual_seed(3)
    other = dict(batch, targets=(batch["targets"] + 1) % 100)
    assert model.loss(other).metrics["masked_ce"] != out.metrics["masked_ce"]
    weighted = build_model({"name": "hubert", **to_dict(model.config), "unmasked_weight": 0.5})
    torch.manual_seed(3)
    assert weighted.train().loss(batch).metrics["unmasked_ce"] > 0
    # several target sets at once
    two = build_model({"name": "hubert", **to_dict(model.config), "num_classes": [100, 20],
                       "label_frame_shifts": [160, 320]}).train()
    batch["targets"] = targets_for(two, batch)
    metrics = two.loss(batch).metrics
    assert {"acc_target_0", "acc_target_1", "code_perplexity_1"} <= set(metrics)


def test_freeze_projection_freezes_exactly_the_feature_projection_and_keeps_the_loss():
    batch = speech_batch([16000, 12000])
    grads, losses = {}, {}
    for freeze in (False, True):
        torch.manual_seed(0)
        model = build_model({"name": "hubert", **to_dict(hubert_tiny()), "freeze_projection": freeze}).train()
        batch["targets"] = targets_for(model, batch)
        torch.manual_seed(3)
        out = model.loss(batch)
        out.loss.backward()
        losses[freeze] = float(out.loss.detach())
        grads[freeze] = {n for n, p in model.named_parameters() if p.grad is not None}
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        projection = {f"feature_projection.{n}" for n, _ in model.feature_projection.named_parameters()}
        assert frozen == (projection if freeze else set())
    assert projection <= grads[False] and grads[True] == grads[False] - projection
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)  # same forward pass, same RNG draws


def test_init_from_another_k_leaves_only_the_head_fresh_and_other_shapes_still_fail(tmp_path):
    # Iteration 2 from iteration 1's weights (local/pretrain_hubert.sh --it2_init it1): K 5 -> 3.
    def build(seed, **kw):
        torch.manual_seed(seed)
        return build_model({"name": "hubert", **to_dict(hubert_tiny()), **kw})

    src = build(0, num_classes=[5])
    ckpt = tmp_path / "step_00000001.pt"
    ckpt_io.save_checkpoint(ckpt, {"model_name": "hubert", "model": src.state_dict()})
    dst = build(1, num_classes=[3])
    fresh = dst.head.label_embeddings.detach().clone()
    what = ckpt_io.load_model_weights(dst, ckpt, "hubert")
    assert "head.label_embeddings [5, 64] -> [3, 64]" in what
    for key, value in dst.state_dict().items():
        if key == "head.label_embeddings":
            torch.testing.assert_close(value, fresh)  # not taken: another K
        else:
            torch.testing.assert_close(value, src.state_dict()[key], msg=key)  # encoder, projection, final_proj
    # Two target sets and another final_dim: the whole head is fresh, the rest still loads.
    what = ckpt_io.load_model_weights(build(1, num_classes=[3, 5], label_frame_shifts=[320, 320], final_dim=8),
                                      ckpt, "hubert")
    assert "head.final_proj.weight [64, 192] -> [8, 192]" in what and "[5, 64] -> [8, 8]" in what
    # The same K loads everything (no fresh init to report); a shape outside the head is still an error.
    assert "fresh" not in ckpt_io.load_model_weights(build(1, num_classes=[5]), ckpt, "hubert")
    with pytest.raises(ckpt_io.CheckpointError, match=r"tensors have other shapes than model 'hubert'.*encoder\.") as err:
        ckpt_io.load_model_weights(build(1, num_classes=[3], ffn_dim=64), ckpt, "hubert")
    assert "\n" not in str(err.value) and "model sizes" in str(err.value)  # one line, with the fix


def test_missing_or_short_targets_are_errors_naming_the_utterance():
    model = tiny_model("hubert").train()
    batch = speech_batch([16000, 12000])
    with pytest.raises(ValueError, match="no 'targets'.*speechssl targets kmeans"):
        model.loss(batch)
    batch["targets"] = targets_for(model, batch)[:, :30]  # 30 of 49 frames of utterance '0'
    with pytest.raises(ValueError, match=r"utterance '0' has labels for 30 of its 49 model frames"):
        model.loss(batch)
    with pytest.raises(ValueError, match="does not divide the model's frame shift"):
        build_model({"name": "hubert", **to_dict(model.config), "label_frame_shifts": [480]})
    with pytest.raises(ValueError, match="empty cluster dictionary"):
        build_model({"name": "hubert", **to_dict(model.config), "num_classes": [1]})


def test_melhubert_frames_and_batched_equals_single():
    model = tiny_model("hubert")
    assert model.frame_shift == 320 and model.min_samples == 560
    lengths = torch.tensor([560, 879, 880, 16000])
    assert model.num_frames(lengths).tolist() == [1, 1, 2, 49]
    wavs = speech_batch([16000, 9000])["wavs"]
    out = model.encode(wavs, torch.tensor([16000, 9000]))
    single = model.encode(wavs[1:, :9000])
    for a, b in zip(out.hidden_states, single.hidden_states):
        torch.testing.assert_close(a[1, : int(out.lengths[1])], b[0], atol=1e-5, rtol=1e-5)
    mel = melhubert_base()
    assert (mel.conv_layers, mel.stack_frames, mel.num_classes, mel.frontend["n_mels"]) == ([], 2, [512], 40)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert")
    train = make_corpus(root / "c", n=10, seconds=(1.0, 1.6))
    assert main(["targets", "kmeans", "--features", "mfcc", "--train", str(train), "--k", "8", "--sample-hours",
                 "0.002", "--n-init", "2", "--out", str(root / "km")]) == 0
    assert main(["targets", "assign", "--kmeans", str(root / "km"), "--input", str(train), "--out",
                 str(root / "labels"), "--report-labels", "speaker"]) == 0
    return root, train


def test_pretraining_from_kmeans_targets_resumes_bit_exactly(labelled, tmp_path):
    root, train = labelled
    model = {"name": "hubert", **to_dict(tiny_model("hubert").config), "num_classes": [8], "num_layers": 2}
    cfg = recipe(tmp_path, model=model, data={"max_batch_seconds": 2.0, "crop_seconds": 1.0, "min_seconds": 0.5,
                                              "targets": [str(root / "labels")]},
                 train={"max_steps": 6, "ckpt_every_steps": 3, "keep_last": 2, "valid_every": 0, "plot": False})
    ref = tmp_path / "ref"
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(ref)]) == 0
    # a run killed after step 3: the same folder without the last checkpoint, resumed by rerunning
    crashed = tmp_path / "crashed"
    shutil.copytree(ref, crashed)
    (crashed / "checkpoints" / "step_00000006.pt").unlink()
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(crashed)]) == 0
    a = ckpt_io.load_checkpoint(crashed / "checkpoints" / "step_00000006.pt")
    b = ckpt_io.load_checkpoint(ref / "checkpoints" / "step_00000006.pt")
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["targets"] == b["targets"] and a["targets"][0]["k"] == 8
    release = json.loads((ref / "encoder" / "config.json").read_text())
    assert json.dumps(b["targets"][0]["hash"]) in json.dumps(release)  # released encoders carry the provenance
    lines = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= x["acc"] <= 1 for x in lines if x["split"] == "train")
    enc = load_encoder(str(ref / "encoder"))
    assert enc.layer_names == ["latent", "layer_1", "layer_2", "context"] and enc.frame_shift == 320
    # resuming on labels of another k-means is refused
    other = tmp_path / "labels_other"
    assert main(["targets", "kmeans", "--features", "mfcc", "--train", str(train), "--k", "8", "--sample-hours",
                 "0.002", "--n-init", "1", "--seed", "5", "--out", str(tmp_path / "km_other")]) == 0
    assert main(["targets", "assign", "--kmeans", str(tmp_path / "km_other"), "--input", str(train), "--out",
                 str(other), "--report-labels", ""]) == 0
    (crashed / "checkpoints" / "step_00000006.pt").unlink()
    cfg_other = load_pretrain_config(cfg, [f"data.targets=[{other}]"])
    from speechssl.train.trainer import pretrain

    with pytest.raises(ConfigError, match="trained on targets of k-means"):
        pretrain(cfg_other, train, None, crashed)
