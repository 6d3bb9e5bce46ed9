"""TERA / Mockingjay checkpoints in s3prl's format, both ways.

Usage::

    speechssl export s3prl-tera --encoder exp/tera/encoder --out tera_s3prl.ckpt
    # then, in s3prl: S3PRLUpstream("tera_local", path_or_url="tera_s3prl.ckpt")
    #           (or "mockingjay_local": both build the same upstream/mockingjay model)

    from speechssl.integrations.s3prl_tera import import_s3prl_tera
    save_encoder(import_s3prl_tera("tera_s3prl.ckpt"), "exp/tera_imported/encoder")

s3prl 0.4.18's ``upstream/mockingjay`` (``PretrainedTransformer``) reads a dict checkpoint with
``torch.load``:

* ``Upstream_Config.transformer``: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
  ``intermediate_size``, ``hidden_act``, dropouts, ``initializer_range``, ``layer_norm_eps``,
  ``share_layer``, ``pre_layer_norm``;
* ``Upstream_Config.task.sequence_length``: inputs longer than this are cut into chunks encoded
  apart (0: never; the export writes 0 so long inputs give our numbers);
* ``Upstream_Config.audio``: with a ``kaldi`` key, on-the-fly ``torchaudio.compliance.kaldi.fbank``
  (``kaldi.fbank`` keyword arguments), ``delta.order`` and ``cmvn.use_cmvn`` (per-utterance mean
  and unbiased std); otherwise a centred torchaudio log-Mel (what s3prl's own TERA releases use);
* ``Transformer``: ``TransformerModel`` weights (``input_representations.*``,
  ``encoder.layer.{i}.attention.self.{query,key,value}`` ...); ``SpecHead``: the prediction head.

Its hidden states are the input block's output and every layer's: our ``latent, layer_1 ..
layer_N``. A ``position_scale`` other than 1 is folded into the input projection (the input LayerNorm
makes that exact). Exportable, else a clear error: a TERA model, post-LN, no frame stacking, an ``fbank``
frontend with ``cmvn`` ``none`` or ``utterance`` (with variance). Dither is written as 0 (feature
extraction is inference). With ``cmvn: utterance`` s3prl divides by the unbiased std (n - 1) where
speechssl uses the population std (n): features differ by about ``1 / (2n)`` relative for ``n`` frames.
The import takes the same kaldi-audio checkpoints; s3prl's centred torchaudio log-Mel frames are
placed differently from any speechssl frontend's, so those checkpoints are refused with that reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from speechssl.integrations.s3prl_apc import ExportError
from speechssl.utils import atomic_path

_NOT_FBANK_KWARGS = ("sample_frequency",)


class S3PRLImportError(ValueError):
    """An s3prl checkpoint that cannot become a speechssl TERA model; the message says why."""


def _tera_model(encoder_or_path: Any):
    from speechssl.models.tera import TERAModel
    from speechssl.upstream import Encoder, load_encoder

    enc = encoder_or_path if isinstance(encoder_or_path, Encoder) else load_encoder(encoder_or_path)
    model = enc.backbone
    if not isinstance(model, TERAModel):
        raise ExportError(f"{enc.source}: s3prl-tera export needs a TERA / Mockingjay encoder, got {type(model).__name__}")
    return enc, model


def key_table(num_layers: int) -> list[tuple[str, str]]:
    """(speechssl key prefix, s3prl key prefix) of every ``.weight`` / ``.bias`` pair, qkv excluded."""
    table = [("input_projection", "Transformer.input_representations.spec_transform"),
             ("encoder.layer_norm", "Transformer.input_representations.LayerNorm"),
             ("head.dense", "SpecHead.dense"), ("head.norm", "SpecHead.LayerNorm"), ("head.output", "SpecHead.output")]
    for i in range(num_layers):
        ours, theirs = f"encoder.layers.{i}", f"Transformer.encoder.layer.{i}"
        table += [(f"{ours}.attention.out_proj", f"{theirs}.attention.output.dense"),
                  (f"{ours}.attn_norm", f"{theirs}.attention.output.LayerNorm"),
                  (f"{ours}.ffn.fc1", f"{theirs}.intermediate.dense"),
                  (f"{ours}.ffn.fc2", f"{theirs}.output.dense"),
                  (f"{ours}.ffn_norm", f"{theirs}.output.LayerNorm")]
    return table


def s3prl_tera_checkpoint(encoder_or_path: Any) -> dict:
    """The s3prl ``tera_local`` / ``mockingjay_local`` checkpoint dict of a TERA encoder (module docstring)."""
    from speechssl.features.kaldi import kaldi_kwargs

    enc, model = _tera_model(encoder_or_path)
    cfg = model.config
    where = enc.source
    if cfg.layer_norm_first:
        raise ExportError(f"{where}: s3prl's pre_layer_norm model normalises every hidden state; only post-LN "
                          "(layer_norm_first: false) TERA models export")
    if cfg.positions != "sinusoidal":
        raise ExportError(f"{where}: s3prl's TERA adds sinusoidal positions; this model has positions "
                          f"{cfg.positions!r}")
    if cfg.input_block != "linear":
        raise ExportError(f"{where}: s3prl's TERA projects frames with one linear layer; this model has "
                          f"input_block {cfg.input_block!r}")
    if cfg.stack_frames != 1:
        raise ExportError(f"{where}: s3prl's TERA runs on 10 ms frames; this model stacks {cfg.stack_frames} frames")
    frontend = model.frontend
    fcfg = frontend.config
    if frontend.name != "fbank":
        raise ExportError(f"{where}: s3prl's kaldi extracter computes Kaldi fbank; this model's frontend is "
                          f"{frontend.name!r} (s3prl's own log-Mel is centred, ours is not)")
    if fcfg.cmvn not in ("none", "utterance") or (fcfg.cmvn == "utterance" and not fcfg.cmvn_norm_vars):
        raise ExportError(f"{where}: s3prl supports no CMVN or per-utterance mean+variance CMVN; this fbank has "
                          f"cmvn={fcfg.cmvn!r}, cmvn_norm_vars={fcfg.cmvn_norm_vars}")
    fbank = {k: v for k, v in kaldi_kwargs(fcfg).items() if k not in _NOT_FBANK_KWARGS}
    fbank["dither"] = 0.0
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state: dict[str, dict[str, torch.Tensor]] = {"Transformer": {}, "SpecHead": {}}
    for mine, theirs in key_table(cfg.num_layers):
        part, name = theirs.split(".", 1)
        for leaf in ("weight", "bias"):
            state[part][f"{name}.{leaf}"] = ours[f"{mine}.{leaf}"].clone()
    if cfg.position_scale != 1.0:  # LN(Wx + b + s p) == LN((Wx + b) / s + p): s3prl adds p unscaled
        for leaf in ("weight", "bias"):
            state["Transformer"][f"input_representations.spec_transform.{leaf}"] /= cfg.position_scale
    for i in range(cfg.num_layers):
        for leaf in ("weight", "bias"):
            q, k, v = ours[f"encoder.layers.{i}.attention.qkv.{leaf}"].chunk(3, dim=0)
            for name, tensor in (("query", q), ("key", k), ("value", v)):
                state["Transformer"][f"encoder.layer.{i}.attention.self.{name}.{leaf}"] = tensor.clone()
    transformer = {
        "input_dim": int(frontend.out_dim), "hidden_size": int(cfg.embed_dim), "num_hidden_layers": int(cfg.num_layers),
        "num_attention_heads": int(cfg.num_heads), "intermediate_size": int(cfg.ffn_dim), "hidden_act": "gelu",
        "hidden_dropout_prob": float(cfg.dropout), "attention_probs_dropout_prob": float(cfg.attention_dropout),
        "initializer_range": float(cfg.init_std), "layer_norm_eps": float(cfg.layer_norm_eps),
        "share_layer": False, "pre_layer_norm": False,
    }
    task = {"loss": "L1", "sequence_length": 0, "position_encoding_size": int(cfg.embed_dim),
            "mask_proportion": float(cfg.time_ratio) if cfg.time_alteration else 0.0,
            "mask_consecutive_min": int(cfg.time_span), "mask_consecutive_max": int(cfg.time_span),
            "mask_allow_overlap": True, "mask_bucket_ratio": 1.5,
            "mask_frequency": float(cfg.frequency_max_ratio) if cfg.frequency_alteration else 0.0,
            "noise_proportion": float(cfg.magnitude_ratio) if cfg.magnitude_alteration else 0.0}
    audio = {"kaldi": {"feat_type": "fbank", "fbank": fbank}, "delta": {"order": 0},
             "cmvn": {"use_cmvn": fcfg.cmvn == "utterance"}}
    return {
        "Config": {},  # s3prl's runner config; the upstream config is Upstream_Config
        "Upstream_Config": {"transformer": transformer, "task": task, "audio": audio},
        "Transformer": state["Transformer"],
        "SpecHead": state["SpecHead"],
        "speechssl": {"source": str(where), "layers": model.layer_names[:-1], "target": cfg.target},
    }


def export_s3prl_tera(encoder_or_path: Any, out: str | Path) -> Path:
    """Write :func:`s3prl_tera_checkpoint` to ``out`` atomically (tensors and plain containers only)."""
    ckpt = s3prl_tera_checkpoint(encoder_or_path)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return out


# ---------------------------------------------------------------- import
def _need(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise S3PRLImportError(f"{where}: no {key!r} in the checkpoint's config")
    return mapping[key]


def tera_config_from_s3prl(upstream_config: Mapping[str, Any], where: str):
    """s3prl ``Upstream_Config`` -> :class:`~speechssl.models.tera.TERAConfig` (kaldi-audio checkpoints)."""
    from speechssl.features.kaldi import FbankConfig
    from speechssl.models.tera import TERAConfig

    tf = _need(upstream_config, "transformer", where)
    audio = _need(upstream_config, "audio", where)
    if "kaldi" not in audio:
        raise S3PRLImportError(f"{where}: the checkpoint computes s3prl's centred torchaudio log-Mel "
                          f"(audio.input {audio.get('input')}); its frames sit half a window earlier than any "
                          "speechssl frontend's, so it cannot be imported with equal outputs. Only checkpoints "
                          "with on-the-fly Kaldi features (audio.kaldi, e.g. from `speechssl export s3prl-tera`) import")
    if str(tf.get("hidden_act", "gelu")) != "gelu" or bool(tf.get("share_layer")) or bool(tf.get("pre_layer_norm")):
        raise S3PRLImportError(f"{where}: only gelu, unshared, post-LN transformers import; got hidden_act="
                          f"{tf.get('hidden_act')!r}, share_layer={tf.get('share_layer')}, "
                          f"pre_layer_norm={tf.get('pre_layer_norm')}")
    kaldi = _need(audio, "kaldi", where)
    if kaldi.get("feat_type", "fbank") != "fbank" or int((audio.get("delta") or {}).get("order", 2)) != 0:
        raise S3PRLImportError(f"{where}: only Kaldi fbank without deltas imports; got feat_type="
                          f"{kaldi.get('feat_type')!r}, delta order {(audio.get('delta') or {}).get('order', 2)}")
    fields = {f.name for f in dataclasses.fields(FbankConfig)}
    fbank = dict(kaldi.get("fbank") or {})
    fbank.pop("sample_frequency", None)
    unknown = sorted(set(fbank) - fields)
    if unknown:
        raise S3PRLImportError(f"{where}: Kaldi fbank option(s) {unknown} have no speechssl counterpart")
    use_cmvn = bool((audio.get("cmvn") or {}).get("use_cmvn", False))
    frontend = {"name": "fbank", **fbank, "cmvn": "utterance" if use_cmvn else "none"}
    task = upstream_config.get("task") or {}
    return TERAConfig(
        frontend=frontend, embed_dim=int(tf["hidden_size"]), num_layers=int(tf["num_hidden_layers"]),
        num_heads=int(tf["num_attention_heads"]), ffn_dim=int(tf["intermediate_size"]),
        dropout=float(tf["hidden_dropout_prob"]), attention_dropout=float(tf["attention_probs_dropout_prob"]),
        init_std=float(tf.get("initializer_range", 0.02)), layer_norm_eps=float(tf["layer_norm_eps"]),
        time_span=max(1, int(task.get("mask_consecutive_min", 7))),
    )


def import_s3prl_tera(path: str | Path):
    """An s3prl TERA / Mockingjay checkpoint (kaldi audio) -> a speechssl :class:`TERAModel` in eval mode.

    Every ``Transformer`` key must be used; ``SpecHead`` is mapped when present and fits (its output
    width decides ``target``: the input width or ``frame_length // 2 + 1`` bins), else left freshly
    initialised. Read with ``torch.load(weights_only=True)``: checkpoints holding pickled objects
    (s3prl's runner saves its optimizer) are refused rather than unpickled.
    """
    from speechssl.config import to_dict
    from speechssl.models.base import build_model

    where = str(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unpickling refusal or I/O error, reported with the path)
        raise S3PRLImportError(f"{where}: cannot read as a plain-data checkpoint (torch.load weights_only=True): {exc}") from None
    config = ckpt.get("Upstream_Config") if isinstance(ckpt, Mapping) else None
    if not config or "transformer" not in config:
        config = ckpt.get("Config") if isinstance(ckpt, Mapping) else None
    if not isinstance(config, Mapping) or "transformer" not in config or "Transformer" not in ckpt:
        raise S3PRLImportError(f"{where}: not an s3prl TERA / Mockingjay checkpoint (needs Upstream_Config.transformer "
                          "and Transformer weights)")
    cfg = tera_config_from_s3prl(config, where)
    theirs = {f"Transformer.{k}".replace(".gamma", ".weight").replace(".beta", ".bias"): v
              for k, v in ckpt["Transformer"].items()}
    head = ckpt.get("SpecHead") or {}
    theirs.update({f"SpecHead.{k}": v for k, v in head.items()})
    out_dim = tuple(head["output.weight"].shape)[0] if "output.weight" in head else None
    in_dim = int(theirs["Transformer.input_representations.spec_transform.weight"].shape[1])
    if out_dim is not None and out_dim != in_dim:
        cfg = dataclasses.replace(cfg, target="linear", frequency_alteration=False)
    model = build_model({"name": "tera", **to_dict(cfg)})
    state = model.state_dict()
    used: set[str] = set()
    for mine, other in key_table(cfg.num_layers):
        for leaf in ("weight", "bias"):
            key = f"{other}.{leaf}"
            if key in theirs and theirs[key].shape == state[f"{mine}.{leaf}"].shape:
                state[f"{mine}.{leaf}"] = theirs[key]
                used.add(key)
            elif not key.startswith("SpecHead."):
                raise S3PRLImportError(f"{where}: {key} is missing or has the wrong shape for a {cfg.num_layers}-layer "
                                  f"{cfg.embed_dim}-dim model")
    for i in range(cfg.num_layers):
        for leaf in ("weight", "bias"):
            parts = [f"Transformer.encoder.layer.{i}.attention.self.{n}.{leaf}" for n in ("query", "key", "value")]
            missing = [p for p in parts if p not in theirs]
            if missing:
                raise S3PRLImportError(f"{where}: missing {missing}")
            state[f"encoder.layers.{i}.attention.qkv.{leaf}"] = torch.cat([theirs[p] for p in parts], 0)
            used.update(parts)
    left = sorted(k for k in theirs if k.startswith("Transformer.") and k not in used)
    if left:
        raise S3PRLImportError(f"{where}: unused Transformer weights {left[:10]} (a model speechssl's TERA does not have)")
    model.load_state_dict(state)
    return model.eval()
