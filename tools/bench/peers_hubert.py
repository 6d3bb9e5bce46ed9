"""Ours vs torchaudio's ``HuBERTPretrainModel`` with its examples' loss: the HuBERT rows of the ``peers``
section (``run_all.py --only peers``), split from :mod:`peers` (which holds the shared timing and
checking helpers and the wav2vec 2.0 / APC rows). ``hubert_rows(spec)`` is called by run_all like the
other ``<family>_rows``; ``hubert_config`` / ``torchaudio_hubert`` also serve the ``hubert`` extraction
section (tools/bench/extraction.py).
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import torch
from common import median
from peers import TARGETS, _autocast, _grad_diff, _rel, _step, _timed_pair
from pretrain import make_batch

# ---- HuBERT vs torchaudio's HuBERTPretrainModel ------------------------------------------
# torchaudio ships the model (``hubert_pretrain_base``) but not its loss: the loss is
# ``examples/hubert/loss/hubert_loss.py`` of the torchaudio repository, copied below.
HUBERT_TINY_CONV = [(32, 10, 5), (32, 3, 2), (32, 2, 2)]  # 20-sample frames (1.25 ms): short clips, many frames


def torchaudio_hubert_loss(logit_m, logit_u, feature_penalty, masked_weight: float = 1.0,
                           unmasked_weight: float = 0.0, feature_weight: float = 10.0, reduction: str = "sum"):
    """torchaudio ``examples/hubert/loss/hubert_loss.py`` ``hubert_loss`` (the positive logit is column 0)."""
    loss = feature_penalty * feature_weight * logit_m.shape[0]
    if logit_m is not None:
        target_m = torch.zeros(logit_m.shape[0], dtype=torch.long, device=logit_m.device)
        loss = loss + torch.nn.functional.cross_entropy(logit_m, target_m, reduction=reduction) * masked_weight
    if logit_u is not None:
        target_u = torch.zeros(logit_u.shape[0], dtype=torch.long, device=logit_m.device)
        loss = loss + torch.nn.functional.cross_entropy(logit_u, target_u, reduction=reduction) * unmasked_weight
    return loss


def hubert_config(size: str, **changes):
    """Our HuBERT for the comparison: Base = ``recipes/pretrain/hubert_base.yaml``'s model, or a tiny one.

    Layer drop off (each timed step does the same work); everything else as published.
    """
    from speechssl.models.hubert import HubertConfig
    from speechssl.train.config import load_pretrain_config

    if size == "base":
        from common import REPO

        cfg = load_pretrain_config(str(REPO / "recipes" / "pretrain" / "hubert_base.yaml")).model
    elif size == "tiny":
        cfg = HubertConfig(conv_layers=HUBERT_TINY_CONV, embed_dim=32, num_layers=2, num_heads=2, ffn_dim=64,
                           pos_conv_kernel=16, pos_conv_groups=4, num_classes=[20], label_frame_shifts=[20],
                           final_dim=16, untie_final_proj=True, frontend={"name": "waveform", "normalize": False})
    else:
        raise ValueError(f"hubert size must be base or tiny, got {size!r}")
    return dataclasses.replace(cfg, layer_drop=0.0, **changes)


def torchaudio_hubert(cfg, size: str):
    """torchaudio's ``HuBERTPretrainModel`` of ``cfg``'s shape and dropouts (``hubert_pretrain_base`` for Base)."""
    import torchaudio

    drops = dict(encoder_projection_dropout=cfg.input_dropout, encoder_attention_dropout=cfg.attention_dropout,
                 encoder_ff_interm_dropout=cfg.activation_dropout, encoder_dropout=cfg.dropout,
                 encoder_layer_drop=cfg.layer_drop, num_classes=cfg.num_classes[0],
                 feature_grad_mult=cfg.feature_grad_mult)
    if size == "base":
        return torchaudio.models.hubert_pretrain_base(**drops)
    return torchaudio.models.hubert_pretrain_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[list(c) for c in cfg.conv_layers],
        extractor_conv_bias=cfg.conv_bias, encoder_embed_dim=cfg.embed_dim, encoder_pos_conv_kernel=cfg.pos_conv_kernel,
        encoder_pos_conv_groups=cfg.pos_conv_groups, encoder_num_layers=cfg.num_layers,
        encoder_num_heads=cfg.num_heads, encoder_ff_interm_features=cfg.ffn_dim,
        encoder_layer_norm_first=cfg.layer_norm_first, mask_prob=cfg.mask_prob * cfg.mask_span,
        mask_selection="static", mask_other=0.0, mask_length=cfg.mask_span, no_mask_overlap=False, mask_min_space=1,
        mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0, mask_channel_length=10,
        no_mask_channel_overlap=False, mask_channel_min_space=1, skip_masked=False, skip_nomask=False,
        final_dim=cfg.final_dim, **drops)


SHAPE_FIELDS = ("conv_layers", "conv_norm", "conv_bias", "embed_dim", "num_layers", "num_heads", "ffn_dim",
                "layer_norm_first", "pos_conv_kernel", "pos_conv_groups", "num_classes", "final_dim")


def hubert_pair(cfg, size: str, seed: int = 0):
    """(ours, torchaudio): torchaudio's model (random init, ``seed``) and ours built from ``cfg`` holding its
    weights through speechssl's importer (``importers.from_torchaudio``); the shapes must be the same."""
    from speechssl.config import to_dict
    from speechssl.models.base import build_model
    from speechssl.upstream.importers import from_torchaudio

    torch.manual_seed(seed)
    ta = torchaudio_hubert(cfg, size)
    imported = from_torchaudio(ta)
    differ = [k for k in SHAPE_FIELDS if getattr(imported.config, k) != getattr(cfg, k)]
    if differ:
        raise RuntimeError(f"torchaudio's model is not our config's shape: {differ}")
    ours = build_model({"name": "hubert", **to_dict(cfg)}, init_weights=False)
    ours.load_state_dict(imported.state_dict())
    return ours, ta


@dataclasses.dataclass
class HubertInputs:
    batch: dict  # with "targets" [B, T, 1]
    mask: torch.Tensor  # [B, T] bool
    labels: torch.Tensor  # [B, T]


def hubert_inputs(ours, batch_size: int, crop_seconds: float, seed: int = 0) -> HubertInputs:
    """A batch, random frame labels at the model's rate, and one span mask (speechssl's sampler)."""
    from speechssl.modules.masking import span_mask

    cfg = ours.config
    batch = make_batch(batch_size, crop_seconds, seed)
    frames = int(ours.num_frames(batch["lengths"])[0])
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg.num_classes[0], (batch_size, frames), generator=gen)
    mask = span_mask(torch.full((batch_size,), frames), frames, cfg.mask_prob, cfg.mask_span, cfg.min_masks, gen)
    return HubertInputs({**batch, "targets": labels[..., None]}, mask, labels)


def hubert_losses(ours, ta, inputs: HubertInputs):
    """(our loss fn, torchaudio's loss fn) on ``inputs``: ours per masked frame; torchaudio's
    ``HuBERTPretrainModel.forward`` + ``hubert_loss`` (summed, its examples' convention) with the
    mask handed to its mask generator and the feature-penalty weight of our config."""
    import torchaudio.models.wav2vec2.components as components

    import speechssl.models.hubert as hub

    wavs, mask, labels = inputs.batch["wavs"], inputs.mask, inputs.labels
    weight = ours.config.feature_penalty

    def ours_loss():
        with mock.patch.object(hub, "span_mask", lambda *a, **k: mask):
            return ours.loss(inputs.batch).loss

    def ta_loss():
        with mock.patch.object(components, "_compute_mask_indices", lambda *a, **k: mask):
            logit_m, logit_u, pen = ta(wavs, labels)
        return torchaudio_hubert_loss(logit_m, logit_u, pen, feature_weight=weight)
    return ours_loss, ta_loss


def hubert_check(cfg, size: str, batch_size: int, crop_seconds: float, dtype: str = "fp32", seed: int = 0) -> dict:
    """Losses (per masked frame) and gradients of ours and torchaudio's on one batch with dropout off."""
    from speechssl.upstream.importers import map_state_dict

    cfg = dataclasses.replace(cfg, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, input_dropout=0.0)
    ours, ta = hubert_pair(cfg, size, seed)
    ours.train()
    ta.train()
    inputs = hubert_inputs(ours, batch_size, crop_seconds, seed)
    ours_loss, ta_loss = hubert_losses(ours, ta, inputs)
    n = int(inputs.mask.sum())
    with _autocast(dtype):
        a = ours_loss()
        b = ta_loss()
    a.backward()
    b.backward()
    a, b_per_frame = float(a.detach()), float(b.detach()) / n
    # torchaudio's gradients in our layout (the importer's own key table: q/k/v concatenated, ...)
    theirs = map_state_dict(ours.config, {k: p.grad for k, p in ta.named_parameters()}, "torchaudio")
    pairs = [(p.grad * n, theirs[k]) for k, p in ours.named_parameters()]
    return {"ours_loss": round(a, 6), "theirs_loss_per_masked_frame": round(b_per_frame, 6),
            "theirs_loss_sum": round(float(b.detach()), 4), "masked_frames": n, "loss_rel_diff": _rel(a, b_per_frame),
            "grad_max_rel_diff": _grad_diff(pairs), "dtype": dtype}


def hubert_rows(spec: dict) -> dict:
    """spec: ``threads``, ``size``, ``batch_size``, ``crop_seconds``, ``repeats``, ``dtypes``, ``tolerance``, optional
    ``warmup`` (untimed steps per side, default 1).

    Per dtype: the check, then interleaved Trainer steps; for fp32 also our step's FLOPs (one
    forward + backward) as a fraction of the dense fp32 matmul peak measured right before and right
    after the timed steps (``matmul_size``; the ``pretrain`` rows' peak)."""
    from speechssl import accel

    torch.set_num_threads(spec["threads"])
    cfg = hubert_config(spec["size"])
    import torchaudio

    peer = "hubert_pretrain_base()" if spec["size"] == "base" else "hubert_pretrain_model() (tiny)"
    out = {"peer": f"torchaudio.models.{peer} + examples/hubert hubert_loss", "size": spec["size"],
           "torchaudio": torchaudio.__version__, "batch": [spec["batch_size"], spec["crop_seconds"]],
           "target_speedup": TARGETS["hubert"], "kernels": accel.decision().as_dict(), "rows": {}}
    for dtype in spec.get("dtypes", ["fp32", "bf16"]):
        check = hubert_check(cfg, spec["size"], spec["batch_size"], spec["crop_seconds"], dtype)
        tol = spec.get("tolerance", {}).get(dtype, 1e-4 if dtype == "fp32" else 2e-2)
        row = {"check": check, "tolerance": tol, "losses_agree": check["loss_rel_diff"] <= tol}
        if row["losses_agree"]:
            ours, ta = hubert_pair(cfg, spec["size"])
            inputs = hubert_inputs(ours, spec["batch_size"], spec["crop_seconds"])
            ours_loss, ta_loss = hubert_losses(ours, ta, inputs)
            peak = dtype == "fp32" and spec.get("matmul_size")
            before = _peak(spec) if peak else None
            row.update(_timed_pair(_step(ours, ours_loss), _step(ta, ta_loss), dtype, spec))
            row["meets_target"] = row["speedup"] >= TARGETS["hubert"]
            if peak:
                row.update(_fraction_of_peak(ours_loss, row["ours_s"], [before, _peak(spec)]))
            del ours, ta
        out["rows"][dtype] = row
    return out


def _peak(spec: dict) -> float:
    from pretrain import matmul_peak

    return matmul_peak({"threads": spec["threads"], "size": spec["matmul_size"], "repeats": 3,
                        "dtypes": ["fp32"]})["fp32_gflops"]


def _fraction_of_peak(loss_fn, step_times: list[float], peaks: list[float]) -> dict:
    """FLOPs of one forward + backward of ``loss_fn`` (:func:`pretrain.flops_of`) over the median step time, as
    a fraction of the best of ``peaks`` (a peak read can land on one core: see pretrain.throughput)."""
    from pretrain import flops_of

    flops = flops_of(loss_fn)
    peak = max(peaks)
    achieved = flops / median(step_times) / 1e9
    return {"gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(achieved, 1),
            "peak_gflops_fp32": [round(p, 1) for p in peaks], "fraction_of_matmul_peak": round(achieved / peak, 4)}
