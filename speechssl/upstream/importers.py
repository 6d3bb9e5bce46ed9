"""Build speechssl wav2vec 2.0 and HuBERT models from torchaudio and Hugging Face models or folders.

Importers map keys, never copy code (torchaudio ``utils/import_fairseq.py`` style): the
foreign config is parsed into :class:`~speechssl.models.wav2vec2.Wav2Vec2Config`, then a small
table maps every foreign state-dict key to ours. Every foreign key must be used (known
task heads we have no counterpart for, e.g. a CTC ``lm_head``, are dropped with a log line);
a missing or left-over key is an error naming the keys.

Supported:

* torchaudio ``Wav2Vec2Model`` objects (:func:`from_torchaudio`) and ``HuBERTPretrainModel`` ones
  (``hubert_pretrain_base`` ...: a speechssl HuBERT with its ``logit_generator`` as our cosine head),
  and torchaudio folders: ``config.json`` holding the keyword arguments of
  ``torchaudio.models.wav2vec2_model`` (``extractor_mode``, ``encoder_embed_dim``, ...) plus
  ``model.safetensors`` (or ``model.pt`` / ``model.pth``, read with ``weights_only=True``).
* Hugging Face ``Wav2Vec2Model`` / ``Wav2Vec2ForPreTraining`` / ``Wav2Vec2ForCTC`` (and
  ``HubertModel``, imported as a speechssl HuBERT whose head is freshly initialised: Hugging Face
  has no HuBERT pretraining head) objects or saved folders (``config.json`` + ``model.safetensors``,
  sharded safetensors, or ``pytorch_model.bin``), both the group-norm (Base) and the
  layer-norm / "stable layer norm" (Large-LV60) variants; old ``weight_g``/``weight_v``
  weight-norm names are accepted. Quantizer, ``project_q`` and ``project_hid`` of a
  ``ForPreTraining`` checkpoint map to ours; otherwise those stay freshly initialised.

:func:`load_foreign` detects which format a folder holds. Nothing is ever downloaded. The config
fields and state-dict keys are tables in :mod:`speechssl.upstream.foreign_tables`, shared with the
Hugging Face exporter (:func:`export_hf`, re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from speechssl.models.base import SSLModel
from speechssl.models.hubert import HubertConfig, build_hubert
from speechssl.models.wav2vec2 import Wav2Vec2Config, build_wav2vec2
from speechssl.upstream.foreign_files import HF_WEIGHTS, TA_WEIGHTS, read_json, read_weights
from speechssl.upstream.foreign_tables import (
    HF_FIELDS,
    HF_FIXED,
    TORCHAUDIO_FIELDS,
    ForeignCheckpointError,
    fields_for,
    key_table,
    missing_fields,
    read_fields,
)
from speechssl.upstream.hf_export import export_hf

__all__ = ["ForeignCheckpointError", "config_from_hf", "config_from_torchaudio_kwargs", "detect_foreign_format",
           "export_hf", "from_hf", "from_torchaudio", "key_table", "load_foreign", "map_state_dict",
           "torchaudio_kwargs"]

log = logging.getLogger(__name__)

# Foreign task heads without a counterpart in the SSL model: dropped (logged), never an error.
DROPPED_PREFIXES = ("aux.", "lm_head.", "logit_generator.", "projector.", "classifier.")
# Our keys that a foreign *encoder* checkpoint may legitimately lack (pretraining-only parts).
OPTIONAL_OURS = ("mask_emb", "quantizer.weight_proj.", "quantizer.codevectors", "project_q.", "final_proj.", "head.")

TA_DEFAULT_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


# --------------------------------------------------------------------------------------------
# State dict (the key table lives in speechssl.upstream.foreign_tables)
# --------------------------------------------------------------------------------------------
def _normalise_foreign_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip base-model prefixes and rename legacy weight-norm keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("wav2vec2.", "hubert."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[key] = value
    return out


def map_state_dict(cfg: Wav2Vec2Config | HubertConfig, state: Mapping[str, torch.Tensor], style: str,
                   source: str = "foreign model") -> dict[str, torch.Tensor]:
    """Map a foreign state dict onto our key names; every foreign key must be used.

    Raises:
        ForeignCheckpointError: naming the missing foreign keys (needed by our model) and the
            left-over foreign keys (not understood), and tensors of the wrong shape.
    """
    theirs = _normalise_foreign_keys(state)
    used: set[str] = set()
    mapped: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for ours, names in key_table(cfg, style):
        present = [n for n in names if n in theirs]
        if len(present) != len(names):
            if not ours.startswith(OPTIONAL_OURS):
                missing.extend(n for n in names if n not in theirs)
            continue
        tensors = [theirs[n] for n in names]
        mapped[ours] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        used.update(names)
    dropped = sorted(k for k in theirs if k not in used and k.startswith(DROPPED_PREFIXES))
    extra = sorted(k for k in theirs if k not in used and not k.startswith(DROPPED_PREFIXES))
    if missing or extra:
        raise ForeignCheckpointError(
            f"{source}: state dict does not match a {style} {type(cfg).__name__[:-6]} model of this config: "
            f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''} ({len(missing)}); "
            f"unexpected keys {extra[:20]}{' ...' if len(extra) > 20 else ''} ({len(extra)})"
        )
    if dropped:
        log.info("%s: dropping task-head weights with no SSL counterpart: %s", source, ", ".join(dropped))
    return mapped


def _load_mapped(cfg: Wav2Vec2Config | HubertConfig, mapped: dict[str, torch.Tensor], source: str) -> SSLModel:
    model = build_hubert(cfg) if isinstance(cfg, HubertConfig) else build_wav2vec2(cfg)
    own = model.state_dict()
    bad = [f"{k}: ours {tuple(own[k].shape)} vs theirs {tuple(v.shape)}" for k, v in mapped.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ForeignCheckpointError(f"{source}: tensor shapes differ from the parsed config: {bad[:10]}")
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    left = [k for k in missing if not k.startswith(OPTIONAL_OURS) and k != "quantizer.temperature"]
    if left or unexpected:  # a bug in the table, not in the checkpoint
        raise ForeignCheckpointError(f"{source}: internal key table error: missing {left}, unexpected {unexpected}")
    fresh = sorted({k.split(".")[0] for k in missing if k != "quantizer.temperature"})
    if fresh:
        log.info("%s: %s not in the checkpoint; freshly initialised (only matter for further pretraining)",
                 source, ", ".join(fresh))
    return model.eval()


# --------------------------------------------------------------------------------------------
# torchaudio
# --------------------------------------------------------------------------------------------
def config_from_torchaudio_kwargs(kwargs: Mapping[str, Any], where: str = "torchaudio config",
                                  config_cls: type = Wav2Vec2Config, **extra: Any) -> Wav2Vec2Config | HubertConfig:
    """Our config (``config_cls``, plus ``extra`` fields) from the keyword arguments of
    ``torchaudio.models.wav2vec2_model``."""
    absent = ([] if "extractor_mode" in kwargs else ["extractor_mode"]) + missing_fields(kwargs, TORCHAUDIO_FIELDS)
    if absent:
        raise ForeignCheckpointError(f"{where}: missing keys {absent}")
    mode = kwargs["extractor_mode"]
    if mode not in ("group_norm", "layer_norm"):
        raise ForeignCheckpointError(f"{where}: extractor_mode must be group_norm or layer_norm, got {mode!r}")
    conv = kwargs.get("extractor_conv_layer_config") or TA_DEFAULT_CONV
    if config_cls is HubertConfig:  # imported targets come at the model's frame rate (iteration 2)
        extra = {"label_frame_shifts": [math.prod(int(layer[2]) for layer in conv)], **extra}
    return config_cls(
        frontend={"name": "waveform"},
        conv_layers=[tuple(int(v) for v in layer) for layer in conv],
        conv_norm=mode,
        **read_fields(kwargs, TORCHAUDIO_FIELDS, where),
        **extra,
    )


def torchaudio_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """Recover ``wav2vec2_model`` keyword arguments from a torchaudio ``Wav2Vec2Model``."""
    convs = model.feature_extractor.conv_layers
    first_norm = convs[0].layer_norm
    mode = "group_norm" if isinstance(first_norm, torch.nn.GroupNorm) else "layer_norm"
    if first_norm is None:
        raise ForeignCheckpointError("torchaudio model: feature extractor without normalisation is not supported")
    transformer = model.encoder.transformer
    layer0 = transformer.layers[0]
    return {
        "extractor_mode": mode,
        "extractor_conv_layer_config": [(c.conv.out_channels, c.conv.kernel_size[0], c.conv.stride[0]) for c in convs],
        "extractor_conv_bias": convs[0].conv.bias is not None,
        "encoder_embed_dim": model.encoder.feature_projection.projection.out_features,
        "encoder_projection_dropout": model.encoder.feature_projection.dropout.p,
        "encoder_pos_conv_kernel": transformer.pos_conv_embed.kernel_size,
        "encoder_pos_conv_groups": transformer.pos_conv_embed.conv.groups,
        "encoder_num_layers": len(transformer.layers),
        "encoder_num_heads": layer0.attention.num_heads,
        "encoder_attention_dropout": layer0.attention.dropout,
        "encoder_ff_interm_features": layer0.feed_forward.intermediate_dense.out_features,
        "encoder_ff_interm_dropout": layer0.feed_forward.intermediate_dropout.p,
        "encoder_dropout": layer0.dropout.p,
        "encoder_layer_norm_first": layer0.layer_norm_first,
        "encoder_layer_drop": transformer.layer_drop,
    }


def hubert_head_fields(model: torch.nn.Module) -> dict[str, Any]:
    """HuBERT config fields of a torchaudio ``HuBERTPretrainModel``'s head and masking (its logit
    temperature is torchaudio's fixed 0.1, its loss weights those of ``torchaudio.models.hubert_loss``)."""
    masks = model.mask_generator
    classes, final_dim = model.logit_generator.label_embeddings.shape
    return {"num_classes": [int(classes)], "final_dim": int(final_dim), "logit_temperature": 0.1,
            "unmasked_weight": 0.0, "mask_prob": float(masks.mask_prob) / masks.mask_length,
            "mask_span": int(masks.mask_length), "feature_grad_mult": float(model.feature_grad_mult or 1.0)}


def from_torchaudio(model: torch.nn.Module) -> SSLModel:
    """speechssl model from a torchaudio ``Wav2Vec2Model`` (a wav2vec 2.0) or ``HuBERTPretrainModel``
    (a HuBERT with its head); same hidden states."""
    kind = type(model).__name__
    if kind == "HuBERTPretrainModel":
        inner, state = model.wav2vec2, model.state_dict()  # "wav2vec2." prefix stripped by the mapper
        cfg = config_from_torchaudio_kwargs(torchaudio_kwargs(inner), f"torchaudio {kind}", HubertConfig,
                                            **hubert_head_fields(model))
        return _load_mapped(cfg, map_state_dict(cfg, state, "torchaudio", f"torchaudio {kind}"), f"torchaudio {kind}")
    if kind == "Wav2Vec2Model" and hasattr(model, "feature_extractor"):
        inner, state = model, model.state_dict()
    else:
        raise ForeignCheckpointError(f"from_torchaudio: expected a torchaudio Wav2Vec2Model or HuBERTPretrainModel, "
                                     f"got {type(model).__module__}.{kind}")
    cfg = config_from_torchaudio_kwargs(torchaudio_kwargs(inner), where=f"torchaudio {kind}")
    return _load_mapped(cfg, map_state_dict(cfg, state, "torchaudio", f"torchaudio {kind}"), f"torchaudio {kind}")


# --------------------------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------------------------
def config_from_hf(hf: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None,
                   where: str = "Hugging Face config") -> Wav2Vec2Config | HubertConfig:
    """Our config from a Hugging Face ``Wav2Vec2Config`` (-> wav2vec 2.0) / ``HubertConfig`` (-> HuBERT) dict."""
    model_type = hf.get("model_type")
    if model_type not in ("wav2vec2", "hubert"):
        raise ForeignCheckpointError(f"{where}: model_type {model_type!r} is not supported (wav2vec2, hubert)")
    for key, expect in HF_FIXED.items():
        if key in hf and hf[key] != expect:
            raise ForeignCheckpointError(f"{where}: {key}={hf[key]!r} is not supported (need {expect!r})")
    norm = {"group": "group_norm", "layer": "layer_norm"}.get(hf.get("feat_extract_norm", "group"))
    if norm is None:
        raise ForeignCheckpointError(f"{where}: feat_extract_norm {hf['feat_extract_norm']!r} is not group or layer")
    dims, kernels, strides = hf.get("conv_dim"), hf.get("conv_kernel"), hf.get("conv_stride")
    if not (dims and kernels and strides) or not len(dims) == len(kernels) == len(strides):
        raise ForeignCheckpointError(f"{where}: conv_dim/conv_kernel/conv_stride missing or of different lengths")
    config_cls = HubertConfig if model_type == "hubert" else Wav2Vec2Config
    fields = read_fields(hf, fields_for(config_cls, HF_FIELDS), where)
    if config_cls is HubertConfig:  # imported targets come at the model's frame rate (iteration 2)
        fields["label_frame_shifts"] = [math.prod(int(s) for s in strides)]
    normalize = bool((preprocessor or {}).get("do_normalize", False))
    return config_cls(
        frontend={"name": "waveform", "normalize": normalize},
        conv_layers=[(int(d), int(k), int(s)) for d, k, s in zip(dims, kernels, strides)],
        conv_norm=norm,
        # HF's mask_time_prob is the share of masked frames; ours the share of span starts
        mask_prob=min(1.0, float(hf.get("mask_time_prob", 0.65)) / fields["mask_span"]),
        **fields,
    )


def from_hf(model_or_folder: Any) -> SSLModel:
    """speechssl model from a ``transformers`` Wav2Vec2/HuBERT model object or a saved local folder."""
    if isinstance(model_or_folder, (str, Path)):
        return _from_hf_folder(Path(model_or_folder))
    config = getattr(model_or_folder, "config", None)
    if config is None or not hasattr(model_or_folder, "state_dict"):
        raise ForeignCheckpointError(f"from_hf: expected a transformers model or a folder, got {type(model_or_folder)}")
    source = f"transformers {type(model_or_folder).__name__}"
    cfg = config_from_hf(config.to_dict(), where=source)
    return _load_mapped(cfg, map_state_dict(cfg, model_or_folder.state_dict(), "hf", source), source)


def _from_hf_folder(folder: Path) -> SSLModel:
    config = read_json(folder / "config.json")
    pre_path = folder / "preprocessor_config.json"
    preprocessor = read_json(pre_path) if pre_path.is_file() else None
    cfg = config_from_hf(config, preprocessor, where=str(folder / "config.json"))
    state = read_weights(folder, HF_WEIGHTS)
    return _load_mapped(cfg, map_state_dict(cfg, state, "hf", str(folder)), str(folder))


def _from_torchaudio_folder(folder: Path) -> SSLModel:
    kwargs = read_json(folder / "config.json")
    cfg = config_from_torchaudio_kwargs(kwargs, where=str(folder / "config.json"))
    state = read_weights(folder, TA_WEIGHTS)
    return _load_mapped(cfg, map_state_dict(cfg, state, "torchaudio", str(folder)), str(folder))


def detect_foreign_format(folder: str | Path) -> str:
    """``"hf"`` or ``"torchaudio"`` for a folder, or ForeignCheckpointError explaining why neither."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ForeignCheckpointError(f"{folder}: no config.json, so neither a Hugging Face nor a torchaudio folder")
    config = read_json(path)
    if "model_type" in config:
        return "hf"
    if "extractor_mode" in config:
        return "torchaudio"
    raise ForeignCheckpointError(
        f"{path}: neither a Hugging Face config (no 'model_type') nor torchaudio wav2vec2_model keyword "
        f"arguments (no 'extractor_mode'); keys: {sorted(config)[:15]}"
    )


def load_foreign(folder: str | Path) -> SSLModel:
    """Load a local Hugging Face or torchaudio wav2vec 2.0 / HuBERT folder, or a Hugging Face
    data2vec-audio one (:mod:`speechssl.upstream.data2vec_hf`); the format is detected."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ForeignCheckpointError(f"{folder}: not a folder")
    if detect_foreign_format(folder) == "hf":
        if read_json(folder / "config.json").get("model_type") == "data2vec-audio":
            from speechssl.upstream.data2vec_hf import from_hf_data2vec

            return from_hf_data2vec(folder)
        return _from_hf_folder(folder)
    return _from_torchaudio_folder(folder)
