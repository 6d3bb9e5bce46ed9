"""Side-by-side training steps: speechssl vs the peers' own pretraining code, same maths checked first.

Usage (the entry point is ``tools/bench/run_all.py --only peers``; the checks are also
``tests/test_bench_peers.py`` on tiny configs)::

    from peers import wav2vec2_rows, apc_rows
    wav2vec2_rows({"size": "base", "batch_size": 2, "crop_seconds": 4.0, "repeats": 5, "threads": 2})

* **wav2vec 2.0** vs Hugging Face ``Wav2Vec2ForPreTraining`` (randomly initialised from a config
  built by :func:`speechssl.upstream.hf_export.hf_config`; nothing is downloaded). Our weights are
  copied into it (:func:`speechssl.upstream.hf_export.hf_state_dict`). Both get the same batch,
  the same span mask and the same sampled distractors (drawn once with speechssl's samplers and
  handed to HF as ``mask_time_indices`` / ``sampled_negative_indices``, as HF's data collator does);
  the loss is contrastive + diversity in both. HF has no feature penalty and no gradient scale
  into the conv encoder, so ours runs with ``feature_penalty 0`` and ``feature_grad_mult 1`` here
  (the same maths, the same gradients). HF sums over masked frames where we average:
  ``hf_loss / N`` is compared with ours, and ``N * our_grad`` with HF's gradients.
* **APC** vs s3prl 0.4.18's own ``pretrain/apc`` expert (``UpstreamPretrainExpert.forward``:
  s3prl's ``APC`` GRU stack on packed sequences, L1 on the frame ``n = 3`` ahead), imported with
  speechssl's s3prl shims; weights through :func:`speechssl.integrations.s3prl_apc.s3prl_apc_checkpoint`.
  Ours is configured with the Kaldi fbank frontend (Hamming, no CMVN) s3prl computes, so the
  losses agree to float rounding. s3prl's features come precomputed (its DataLoader computes them
  in workers); ours computes its frontend inside the step: the ratio is conservative for us.

The check (``*_check``): dropout off in both (layer drop too), the same fixed Gumbel noise (the
only other randomness: ``F.gumbel_softmax`` is swapped for a seeded copy while the check runs),
one forward+backward each, losses and gradients compared. The timed step is the Trainer's:
zero_grad -> loss -> backward -> clip -> Adam (speechssl's optimiser for both), with the
published dropouts, fp32 and bf16 autocast, interleaved A, B, A, B... (``common.compare``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys
from collections.abc import Iterator
from unittest import mock

import torch
from common import compare, median, summarise
from pretrain import make_batch

TARGETS = {"wav2vec2": 1.5, "apc": 2.0, "hubert": 1.3}


# ---- shared --------------------------------------------------------------------------------
@contextlib.contextmanager
def fixed_gumbel(seed: int = 1234) -> Iterator[None]:
    """``F.gumbel_softmax`` draws its noise from a fresh ``seed`` generator at every call.

    ours and HF call it on the same logits (``[N, G, V]`` vs ``[N * G, V]``, the same memory order),
    so both get the same noise whatever else consumed the global RNG before.
    """
    def seeded(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
        gen = torch.Generator().manual_seed(seed)
        noise = -torch.empty(logits.shape, dtype=logits.dtype).exponential_(generator=gen).log()
        y = ((logits + noise.to(logits.device)) / tau).softmax(dim)
        if not hard:
            return y
        index = y.max(dim, keepdim=True)[1]
        y_hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
        return y_hard - y.detach() + y

    with mock.patch.object(torch.nn.functional, "gumbel_softmax", seeded):
        yield


def _step(model: torch.nn.Module, loss_fn, clip_norm: float = 1.0):
    """The Trainer's step around ``loss_fn()``: zero_grad -> loss -> backward -> clip -> speechssl's Adam."""
    from speechssl.train.config import OptimConfig
    from speechssl.train.optim import build_optimizer

    opt = build_optimizer(model.parameters(), OptimConfig(lr=1e-5))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        return loss
    return step


def _autocast(dtype: str):
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _grad_diff(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Largest ``max|ours - theirs| / max|theirs|`` over parameter gradients.

    The denominator is floored at 1e-4 of the largest gradient of the model: gradients that are
    zero in exact arithmetic (the attention key bias: softmax ignores a per-query constant) are
    rounding noise in both implementations and are compared on that scale.
    """
    floor = 1e-4 * max(float(t.abs().max()) for _, t in pairs)
    return max(float((o.float() - t.float()).abs().max()) / max(float(t.abs().max()), floor) for o, t in pairs)


def _timed_pair(ours_step, theirs_step, dtype: str, spec: dict) -> dict:
    """Interleaved timing of the two steps under ``dtype``: ``spec["repeats"]`` timed steps per side after
    ``spec.get("warmup", 1)`` untimed ones (the peer rows' spec)."""
    def run(fn):
        def call():
            with _autocast(dtype):
                return fn()
        return call
    repeats = spec["repeats"]
    times = compare({"ours": run(ours_step), "theirs": run(theirs_step)}, repeats=repeats, warmup=spec.get("warmup", 1))
    stats = summarise(times, "ours")
    return {"ours_median_s": stats["ours"]["median_s"], "theirs_median_s": stats["theirs"]["median_s"],
            "speedup": round(median(times["theirs"]) / median(times["ours"]), 3), "repeats": repeats,
            "ours_s": [round(t, 4) for t in times["ours"]], "theirs_s": [round(t, 4) for t in times["theirs"]]}


# ---- wav2vec 2.0 vs Hugging Face -----------------------------------------------------------
def wav2vec2_config(size: str, **changes):
    """Our config for the comparison: Base (or a tiny waveform model), HF-expressible maths."""
    from speechssl.models.wav2vec2 import Wav2Vec2Config, wav2vec2_base

    if size == "base":
        cfg = wav2vec2_base()
    elif size == "tiny":
        cfg = Wav2Vec2Config(conv_layers=[(32, 10, 5), (32, 3, 2), (32, 2, 2)], embed_dim=32, num_layers=2,
                             num_heads=2, ffn_dim=64, pos_conv_kernel=16, pos_conv_groups=4, num_vars=16,
                             vq_dim=16, final_dim=16, num_negatives=8)
    else:
        raise ValueError(f"wav2vec2 size must be base or tiny, got {size!r}")
    # layer drop skips a random number of layers per step: off, so each step does the same work
    cfg = dataclasses.replace(cfg, layer_drop=0.0, feature_penalty=0.0, feature_grad_mult=1.0)
    return dataclasses.replace(cfg, **changes)


def wav2vec2_pair(cfg, seed: int = 0):
    """(ours, hf): our model built from ``cfg`` and HF's ``Wav2Vec2ForPreTraining`` holding its weights."""
    from transformers import Wav2Vec2Config as HFConfig
    from transformers import Wav2Vec2ForPreTraining

    from speechssl.config import to_dict
    from speechssl.models.base import build_model
    from speechssl.upstream.hf_export import hf_config, hf_state_dict

    torch.manual_seed(seed)
    ours = build_model({"name": "wav2vec2", **to_dict(cfg)})
    hf = Wav2Vec2ForPreTraining(HFConfig(**hf_config(ours)))
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights ours -> HF: missing {missing}, unexpected {unexpected}")
    return ours, hf


@dataclasses.dataclass
class W2VInputs:
    batch: dict
    mask: torch.Tensor  # [B, T] bool
    distractors: object  # speechssl.modules.contrastive.Distractors
    hf_negatives: torch.Tensor  # [B, T, K] indices into the flattened B * T frames


def wav2vec2_inputs(ours, batch_size: int, crop_seconds: float, seed: int = 0) -> W2VInputs:
    """A batch, its span mask and distractors (speechssl's samplers), and the same distractors in HF's format."""
    from speechssl.modules.contrastive import sample_distractors
    from speechssl.modules.masking import span_mask

    cfg = ours.config
    batch = make_batch(batch_size, crop_seconds, seed)
    frames = int(ours.num_frames(batch["lengths"])[0])
    gen = torch.Generator().manual_seed(seed)
    mask = span_mask(torch.full((batch_size,), frames), frames, cfg.mask_prob, cfg.mask_span, cfg.min_masks, gen)
    dis = sample_distractors(mask, cfg.num_negatives, gen)
    hf_neg = torch.zeros(batch_size, frames, cfg.num_negatives, dtype=torch.long)
    hf_neg[dis.batch_index, dis.frame_index] = dis.batch_index[:, None] * frames + dis.distractor_frames
    return W2VInputs(batch, mask, dis, hf_neg)


@contextlib.contextmanager
def given_mask_and_distractors(inputs: W2VInputs) -> Iterator[None]:
    """Our loss uses ``inputs``' mask and distractors instead of drawing them (HF gets the same ones)."""
    import speechssl.models.wav2vec2 as w2v
    from speechssl.modules.contrastive import contrastive_loss

    def loss_with_distractors(*args, **kwargs):
        return contrastive_loss(*args, **kwargs, distractors=inputs.distractors)

    with mock.patch.object(w2v, "span_mask", lambda *a, **k: inputs.mask), \
            mock.patch.object(w2v, "contrastive_loss", loss_with_distractors):
        yield


def wav2vec2_losses(ours, hf, inputs: W2VInputs):
    """(our loss fn, HF loss fn) on ``inputs``: ours per masked frame, HF's summed (its convention)."""
    wavs = inputs.batch["wavs"]
    mask, neg = inputs.mask, inputs.hf_negatives

    def ours_loss():
        with given_mask_and_distractors(inputs):
            return ours.loss(inputs.batch).loss

    def hf_loss():
        return hf(wavs, mask_time_indices=mask, sampled_negative_indices=neg).loss
    return ours_loss, hf_loss


def wav2vec2_check(cfg, batch_size: int, crop_seconds: float, dtype: str = "fp32", seed: int = 0) -> dict:
    """Losses (per masked frame) and gradients of ours and HF on one batch with dropout off."""
    from speechssl.upstream.foreign_tables import key_table

    cfg = dataclasses.replace(cfg, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, input_dropout=0.0,
                              target_dropout=0.0, layer_drop=0.0)
    ours, hf = wav2vec2_pair(cfg, seed)
    ours.train()
    hf.train()
    inputs = wav2vec2_inputs(ours, batch_size, crop_seconds, seed)
    ours_loss, hf_loss = wav2vec2_losses(ours, hf, inputs)
    n = int(inputs.mask.sum())
    with fixed_gumbel(), _autocast(dtype):
        a = ours_loss()
        b = hf_loss()
    a.backward()
    b.backward()
    a, b_per_frame = float(a.detach()), float(b.detach()) / n
    hf_params = dict(hf.named_parameters())
    ours_params = dict(ours.named_parameters())
    pairs = []
    for key, names in key_table(ours.config, "hf"):
        grad = ours_params[key].grad
        parts = grad.chunk(len(names), 0) if len(names) > 1 else (grad,)
        for name, part in zip(names, parts):
            theirs = hf_params[name if name.startswith(("quantizer.", "project_")) else "wav2vec2." + name].grad
            pairs.append((part * n, theirs))
    return {"ours_loss": round(a, 6), "theirs_loss_per_masked_frame": round(b_per_frame, 6),
            "theirs_loss_sum": round(float(b.detach()), 4), "masked_frames": n, "loss_rel_diff": _rel(a, b_per_frame),
            "grad_max_rel_diff": _grad_diff(pairs), "dtype": dtype}


def wav2vec2_rows(spec: dict) -> dict:
    """spec: ``threads``, ``size``, ``batch_size``, ``crop_seconds``, ``repeats``, ``dtypes``, ``tolerance``, optional
    ``warmup`` (untimed steps per side, default 1)."""
    from speechssl import accel

    torch.set_num_threads(spec["threads"])
    cfg = wav2vec2_config(spec["size"])
    out = {"peer": "transformers.Wav2Vec2ForPreTraining", "size": spec["size"],
           "batch": [spec["batch_size"], spec["crop_seconds"]], "target_speedup": TARGETS["wav2vec2"],
           "kernels": accel.decision().as_dict(), "rows": {}}
    import transformers

    out["transformers"] = transformers.__version__
    for dtype in spec.get("dtypes", ["fp32", "bf16"]):
        check = wav2vec2_check(cfg, spec["batch_size"], spec["crop_seconds"], dtype)
        tol = spec.get("tolerance", {}).get(dtype, 1e-4 if dtype == "fp32" else 2e-2)
        row = {"check": check, "tolerance": tol, "losses_agree": check["loss_rel_diff"] <= tol}
        if row["losses_agree"]:
            ours, hf = wav2vec2_pair(cfg)
            out["hf_attn_implementation"] = getattr(hf.config, "_attn_implementation", None)
            inputs = wav2vec2_inputs(ours, spec["batch_size"], spec["crop_seconds"])
            ours_loss, hf_loss = wav2vec2_losses(ours, hf, inputs)
            row.update(_timed_pair(_step(ours, ours_loss), _step(hf, hf_loss), dtype, spec))
            row["meets_target"] = row["speedup"] >= TARGETS["wav2vec2"]
            del ours, hf
        out["rows"][dtype] = row
    return out


# ---- APC vs s3prl's pretrain/apc ------------------------------------------------------------
def s3prl_modules():
    """s3prl's ``pretrain/apc`` expert module, imported the way its own ``run_pretrain.py`` does.

    s3prl's pretraining code imports ``pretrain.*`` / ``upstream.*`` / ``utility.*`` as top-level
    packages (it is run from inside the s3prl folder), so that folder goes on ``sys.path``.
    The benchmark's own ``tools/bench/pretrain.py`` is also called ``pretrain``: it is set aside
    while s3prl's package is imported and put back after (s3prl's modules stay in ``sys.modules``
    under their dotted names; its code imports nothing else from ``pretrain`` later).
    """
    from speechssl.integrations.s3prl_compat import apply

    apply()
    import s3prl

    cached = sys.modules.get("pretrain.apc.pretrain_expert")
    if cached is not None:
        return cached
    root = os.path.dirname(s3prl.__file__)
    ours = sys.modules.pop("pretrain", None)
    sys.path.insert(0, root)
    try:
        import pretrain.apc.pretrain_expert as expert
    finally:
        sys.path.remove(root)
        sys.path.append(root)  # s3prl's ``upstream.apc`` is imported when the expert builds its model
        if ours is not None:
            sys.modules["pretrain"] = ours
    return expert


def apc_config(size: str):
    """Our APC for the comparison: paper (3 x 512 GRU) or tiny, on the Kaldi fbank s3prl computes."""
    from speechssl.models.apc import APCConfig

    hidden = {"paper": 512, "tiny": 32}.get(size)
    if hidden is None:
        raise ValueError(f"apc size must be paper or tiny, got {size!r}")
    return APCConfig(num_layers=3, hidden_size=hidden, context="gru", time_shift=3,
                     frontend={"name": "fbank", "window_type": "hamming", "cmvn": "none"})


def apc_pair(cfg, seed: int = 0):
    """(ours, s3prl expert, s3prl feature transform) with the same weights."""
    from speechssl.config import to_dict
    from speechssl.integrations.s3prl_apc import s3prl_apc_checkpoint
    from speechssl.models.base import build_model
    from speechssl.upstream import load_encoder

    expert_mod = s3prl_modules()
    torch.manual_seed(seed)
    ours = build_model({"name": "apc", **to_dict(cfg)})
    # the export path of ``speechssl export s3prl-apc`` (on a copy: an Encoder freezes its backbone)
    ckpt = s3prl_apc_checkpoint(load_encoder(copy.deepcopy(ours)))
    config = copy.deepcopy(ckpt["config"])
    config["task"] = {"n_future": cfg.time_shift}
    # s3prl's own constructor, minus its training-set DataLoader (built from files in __init__)
    expert = expert_mod.UpstreamPretrainExpert.__new__(expert_mod.UpstreamPretrainExpert)
    torch.nn.Module.__init__(expert)
    expert.datarc, expert.device, expert.multi_gpu, expert.upstream_config = {}, "cpu", False, config
    transform = expert._init_model()
    expert.load_model({"model": ckpt["model"]})
    return ours, expert, transform


def apc_features(transform, batch: dict) -> tuple[torch.Tensor, list[int]]:
    """s3prl's features of ``batch`` (its ``FeatureExtractor`` per utterance, as its dataset does)."""
    with torch.no_grad():
        feats = [transform(w[: int(n)].unsqueeze(0)) for w, n in zip(batch["wavs"], batch["lengths"])]
    lens = [f.shape[0] for f in feats]
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lens


def apc_losses(ours, expert, feats, lens, batch):
    def ours_loss():
        return ours.loss(batch).loss

    def s3prl_loss():
        # s3prl's forward: its APC on packed sequences, L1 to the frame n ahead (global_step not a
        # multiple of log_step: no spectrogram plotting)
        return expert([feats, lens], records={}, global_step=1, log_step=10**9)[0]
    return ours_loss, s3prl_loss


def apc_check(cfg, batch_size: int, crop_seconds: float, dtype: str = "fp32", seed: int = 0) -> dict:
    """Losses and gradients of ours and s3prl's expert on one batch (APC has no dropout by default)."""
    ours, expert, transform = apc_pair(cfg, seed)
    batch = make_batch(batch_size, crop_seconds, seed)
    feats, lens = apc_features(transform, batch)
    ours_loss, s3prl_loss = apc_losses(ours, expert, feats, lens, batch)
    with _autocast(dtype):
        a = ours_loss()
        b = s3prl_loss()
    a.backward()
    b.backward()
    modules = [(ours.postnet, expert.model.postnet), *zip(ours.context.layers, expert.model.rnn_layers)]
    pairs = []
    for mine, theirs in modules:
        their_params = dict(theirs.named_parameters())
        pairs += [(p.grad, their_params[name].grad) for name, p in mine.named_parameters()]
    return {"ours_loss": round(float(a), 6), "theirs_loss": round(float(b), 6),
            "loss_rel_diff": _rel(float(a), float(b)), "grad_max_rel_diff": _grad_diff(pairs), "dtype": dtype,
            "frames": lens}


def apc_rows(spec: dict) -> dict:
    """spec: ``threads``, ``size``, ``batch_size``, ``crop_seconds``, ``repeats``, ``dtypes``, ``tolerance``, optional
    ``warmup`` (untimed steps per side, default 1)."""
    from speechssl import accel

    torch.set_num_threads(spec["threads"])
    cfg = apc_config(spec["size"])
    out = {"peer": "s3prl 0.4.18 pretrain/apc UpstreamPretrainExpert", "size": spec["size"],
           "batch": [spec["batch_size"], spec["crop_seconds"]], "target_speedup": TARGETS["apc"],
           "features": "ours: fbank inside the timed step; s3prl: precomputed (its DataLoader workers)",
           "kernels": accel.decision().as_dict(), "rows": {}}
    for dtype in spec.get("dtypes", ["fp32"]):
        check = apc_check(cfg, spec["batch_size"], spec["crop_seconds"], dtype)
        tol = spec.get("tolerance", {}).get(dtype, 1e-4 if dtype == "fp32" else 2e-2)
        row = {"check": check, "tolerance": tol, "losses_agree": check["loss_rel_diff"] <= tol}
        if row["losses_agree"]:
            ours, expert, transform = apc_pair(cfg)
            batch = make_batch(spec["batch_size"], spec["crop_seconds"])
            feats, lens = apc_features(transform, batch)
            ours_loss, s3prl_loss = apc_losses(ours, expert, feats, lens, batch)
            row.update(_timed_pair(_step(ours, ours_loss), _step(expert, s3prl_loss), dtype, spec))
            row["meets_target"] = row["speedup"] >= TARGETS["apc"]
            del ours, expert
        out["rows"][dtype] = row
    return out
