"""Hugging Face ``Data2VecAudioModel`` (data2vec 1.0 audio) <-> speechssl's data2vec model.

Importers map keys, never copy code (as :mod:`speechssl.upstream.importers` for wav2vec 2.0): the HF
``Data2VecAudioConfig`` is parsed into a :class:`~speechssl.models.data2vec2.Data2Vec2Config` with
``variant: data2vec``, then a table maps every HF key to ours; an unused or missing key is an error.
The EMA teacher and ``final_proj`` are not in an HF encoder: the teacher starts as a copy of the
imported student, ``final_proj`` freshly (they only matter for further pretraining).

HF ``hidden_states[k]`` == our ``layer_k`` (k >= 1) and ``last_hidden_state`` == our ``context`` on
the same audio; HF's ``do_normalize`` (preprocessor) is our waveform frontend's ``normalize``.

:func:`export_hf_data2vec` writes the inverse: ``config.json`` (``model_type: data2vec-audio``),
``model.safetensors`` (no prefix: a ``Data2VecAudioModel``'s own keys) and ``preprocessor_config.json``;
``transformers.Data2VecAudioModel.from_pretrained(folder)`` then gives our hidden states. A data2vec 2.0
model exports too (same encoder; its decoder is a pretraining head and stays behind). Nothing is
ever downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from speechssl.config import to_dict
from speechssl.models.base import build_model
from speechssl.models.data2vec2 import Data2Vec2Config, Data2Vec2Model
from speechssl.upstream.foreign_files import HF_WEIGHTS, read_json, read_weights
from speechssl.upstream.foreign_tables import Field, ForeignCheckpointError, read_fields, write_fields
from speechssl.utils import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

FIELDS: tuple[Field, ...] = (
    Field("embed_dim", "hidden_size", int),
    Field("num_layers", "num_hidden_layers", int),
    Field("num_heads", "num_attention_heads", int),
    Field("ffn_dim", "intermediate_size", int),
    Field("conv_bias", "conv_bias", bool, False),
    Field("pos_conv_depth", "num_conv_pos_embeddings", int, 5),
    Field("pos_conv_kernel", "conv_pos_kernel_size", int, 19),
    Field("pos_conv_groups", "num_conv_pos_embedding_groups", int, 16),
    Field("layer_norm_eps", "layer_norm_eps", float, 1e-5),
    Field("dropout", "hidden_dropout", float, 0.1),
    Field("attention_dropout", "attention_dropout", float, 0.1),
    Field("activation_dropout", "activation_dropout", float, 0.1),
    Field("input_dropout", "feat_proj_dropout", float, 0.0),
    Field("layer_drop", "layerdrop", float, 0.1),
    Field("mask_span", "mask_time_length", int, 10),
    Field("min_masks", "mask_time_min_masks", int, 2),
)
FIXED = {"feat_extract_activation": "gelu", "hidden_act": "gelu", "add_adapter": False}
# Ours, not in an HF encoder (rebuilt or fresh after import).
OPTIONAL_OURS = ("teacher.", "final_proj.", "decoder.", "mask_emb")


def config_from_hf_data2vec(hf: dict[str, Any], preprocessor: dict[str, Any] | None = None,
                            where: str = "Hugging Face config") -> Data2Vec2Config:
    if hf.get("model_type") != "data2vec-audio":
        raise ForeignCheckpointError(f"{where}: model_type {hf.get('model_type')!r} is not 'data2vec-audio'")
    for key, expect in FIXED.items():
        if key in hf and hf[key] != expect:
            raise ForeignCheckpointError(f"{where}: {key}={hf[key]!r} is not supported (need {expect!r})")
    dims, kernels, strides = hf.get("conv_dim"), hf.get("conv_kernel"), hf.get("conv_stride")
    if not (dims and kernels and strides) or not len(dims) == len(kernels) == len(strides):
        raise ForeignCheckpointError(f"{where}: conv_dim/conv_kernel/conv_stride missing or of different lengths")
    fields = read_fields(hf, FIELDS, where)
    return Data2Vec2Config(
        variant="data2vec", clone_batch=1, ema_end=0.9999, ema_anneal_steps=30000,
        frontend={"name": "waveform", "normalize": bool((preprocessor or {}).get("do_normalize", False))},
        conv_layers=[(int(d), int(k), int(s)) for d, k, s in zip(dims, kernels, strides)], conv_norm="layer_norm",
        mask_prob=min(1.0, float(hf.get("mask_time_prob", 0.65)) / fields["mask_span"]),
        top_k=min(8, fields["num_layers"]), **fields)


def key_table(cfg: Data2Vec2Config) -> list[tuple[str, list[str]]]:
    """``[(our_key, [HF keys])]``; several HF keys are concatenated along dim 0 (our fused q/k/v)."""
    table: list[tuple[str, list[str]]] = []

    def add(ours: str, theirs: str | list[str], params: tuple[str, ...] = ("weight", "bias")) -> None:
        names = [theirs] if isinstance(theirs, str) else theirs
        for p in params:
            table.append((f"{ours}.{p}", [f"{t}.{p}" for t in names]))

    for i, _ in enumerate(cfg.conv_layers):
        add(f"feature_encoder.layers.{i}.conv", f"feature_extractor.conv_layers.{i}.conv",
            ("weight", "bias") if cfg.conv_bias else ("weight",))
        add(f"feature_encoder.layers.{i}.norm", f"feature_extractor.conv_layers.{i}.layer_norm")
    add("feature_projection.layer_norm", "feature_projection.layer_norm")
    add("feature_projection.projection", "feature_projection.projection")
    for j in range(cfg.pos_conv_depth):
        add(f"context.pos_conv.layers.{j}.conv", f"encoder.pos_conv_embed.layers.{j}.conv")
    add("context.layer_norm", "encoder.layer_norm")
    for i in range(cfg.num_layers):
        ours, theirs = f"context.layers.{i}.", f"encoder.layers.{i}."
        add(ours + "attention.qkv", [theirs + f"attention.{n}_proj" for n in ("q", "k", "v")])
        add(ours + "attention.out_proj", theirs + "attention.out_proj")
        add(ours + "attn_norm", theirs + "layer_norm")
        add(ours + "ffn.fc1", theirs + "feed_forward.intermediate_dense")
        add(ours + "ffn.fc2", theirs + "feed_forward.output_dense")
        add(ours + "ffn_norm", theirs + "final_layer_norm")
    table.append(("mask_emb", ["masked_spec_embed"]))
    return table


def _map(cfg: Data2Vec2Config, state: dict[str, torch.Tensor], source: str) -> Data2Vec2Model:
    theirs = {k.removeprefix("data2vec_audio."): v for k, v in state.items()}
    mapped, used, missing = {}, set(), []
    for ours, names in key_table(cfg):
        if not all(n in theirs for n in names):
            if not ours.startswith(OPTIONAL_OURS):
                missing.extend(n for n in names if n not in theirs)
            continue
        tensors = [theirs[n] for n in names]
        mapped[ours] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        used.update(names)
    heads = ("lm_head.", "projector.", "classifier.", "tdnn.", "feature_extractor_xvector.", "objective.", "adapter.")
    extra = sorted(k for k in theirs if k not in used and not k.startswith(heads))
    if missing or extra:
        raise ForeignCheckpointError(f"{source}: state dict does not match a data2vec-audio model of this config: "
                                     f"missing keys {missing[:20]} ({len(missing)}); unexpected keys {extra[:20]} "
                                     f"({len(extra)})")
    model = build_model({"name": "data2vec2", **to_dict(cfg)})
    own = model.state_dict()
    bad = [f"{k}: ours {tuple(own[k].shape)} vs theirs {tuple(v.shape)}" for k, v in mapped.items() if own[k].shape != v.shape]
    if bad:
        raise ForeignCheckpointError(f"{source}: tensor shapes differ from the parsed config: {bad[:10]}")
    left, unexpected = model.load_state_dict(mapped, strict=False)
    left = model.complete_state(list(left))  # the teacher: a copy of the imported student
    if [k for k in left if not k.startswith(OPTIONAL_OURS)] or unexpected:
        raise ForeignCheckpointError(f"{source}: internal key table error: missing {left}, unexpected {unexpected}")
    return model.eval()


def from_hf_data2vec(model_or_folder: Any) -> Data2Vec2Model:
    """speechssl data2vec model from a ``transformers`` ``Data2VecAudioModel`` (or a ``...ForCTC`` etc.)
    object or a saved local folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``)."""
    if isinstance(model_or_folder, (str, Path)):
        folder = Path(model_or_folder)
        pre = folder / "preprocessor_config.json"
        cfg = config_from_hf_data2vec(read_json(folder / "config.json"), read_json(pre) if pre.is_file() else None,
                                      where=str(folder / "config.json"))
        return _map(cfg, read_weights(folder, HF_WEIGHTS), str(folder))
    config = getattr(model_or_folder, "config", None)
    if config is None or not hasattr(model_or_folder, "state_dict"):
        raise ForeignCheckpointError(f"from_hf_data2vec: expected a transformers model or a folder, got "
                                     f"{type(model_or_folder)}")
    source = f"transformers {type(model_or_folder).__name__}"
    return _map(config_from_hf_data2vec(config.to_dict(), where=source), model_or_folder.state_dict(), source)


def hf_data2vec_config(model: Data2Vec2Model) -> dict[str, Any]:
    """The ``Data2VecAudioConfig`` dict describing ``model``'s encoder."""
    cfg = model.config
    frontend = dict(cfg.frontend)
    if frontend.get("name") != "waveform" or set(frontend) - {"name", "normalize"}:
        raise ValueError(f"export_hf_data2vec: only waveform-frontend models can be exported, this one has {frontend}")
    if cfg.conv_norm != "layer_norm":
        raise ValueError(f"export_hf_data2vec: Data2VecAudio has a LayerNorm in every conv layer; conv_norm is {cfg.conv_norm!r}")
    return {
        "model_type": "data2vec-audio", "architectures": ["Data2VecAudioModel"],
        "conv_dim": [c for c, _, _ in cfg.conv_layers], "conv_kernel": [k for _, k, _ in cfg.conv_layers],
        "conv_stride": [s for _, _, s in cfg.conv_layers], "num_feat_extract_layers": len(cfg.conv_layers),
        **write_fields(cfg, FIELDS), **FIXED,
        # data2vec 2.0 has no mask embedding: mask_time_prob 0 makes HF build none
        "mask_time_prob": min(1.0, cfg.mask_prob * cfg.mask_span) if cfg.variant == "data2vec" else 0.0,
    }


def export_hf_data2vec(model: Data2Vec2Model, folder: str | Path) -> Path:
    """Write ``model``'s encoder (the student; the teacher's weights with ``release: teacher``) as a HF folder."""
    if not isinstance(model, Data2Vec2Model):
        raise ValueError(f"export_hf_data2vec: expected a speechssl data2vec2 model, got {type(model).__name__}")
    config = hf_data2vec_config(model)
    ours = model.released_state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, names in key_table(model.config):
        if key not in ours:
            continue
        parts = ours[key].detach().cpu().chunk(len(names), dim=0) if len(names) > 1 else (ours[key].detach().cpu(),)
        for name, part in zip(names, parts):
            state[name] = part.contiguous().clone()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(folder / "config.json", config)
    atomic_write_json(folder / "preprocessor_config.json", {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
        "do_normalize": bool(model.config.frontend.get("normalize", False))})
    return folder
