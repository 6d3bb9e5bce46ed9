"""Tables between speechssl's wav2vec 2.0 / HuBERT and torchaudio / Hugging Face: config fields and state-dict keys.

The importers (:mod:`speechssl.upstream.importers`) read these tables one way, the Hugging Face
exporter (:mod:`speechssl.upstream.hf_export`) the other; neither imports the other. HuBERT shares
the feature encoder and transformer rows of wav2vec 2.0 (a HuBERT encoder is a wav2vec 2.0 encoder
with another head) and adds its head's rows (torchaudio ``logit_generator``); a data2vec importer
would add rows the same way, not code.

* :data:`TORCHAUDIO_FIELDS` / :data:`HF_FIELDS`: one :class:`Field` per plain config value
  (``ours`` in :class:`~speechssl.models.wav2vec2.Wav2Vec2Config`, ``theirs`` in the foreign
  config, the cast, the foreign default). Values that need logic (the conv stack, the norm mode,
  the mask probability, the preprocessor's normalisation) stay in the importer/exporter.
* :func:`key_table`: ``[(our_key, [their_keys])]`` for the state dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from speechssl.models.hubert import HubertConfig
from speechssl.models.wav2vec2 import Wav2Vec2Config


class ForeignCheckpointError(ValueError):
    """A foreign model/folder cannot be mapped onto speechssl's wav2vec 2.0 model."""


REQUIRED = object()  # Field.default of a key the foreign config must have


@dataclasses.dataclass(frozen=True)
class Field:
    """One config value: ``ours`` (our field) <- ``cast(foreign[theirs])``, else ``default``."""

    ours: str
    theirs: str
    cast: Callable[[Any], Any]
    default: Any = REQUIRED


# torchaudio.models.wav2vec2_model keyword arguments (extractor_mode and the conv stack: importer)
TORCHAUDIO_FIELDS: tuple[Field, ...] = (
    Field("embed_dim", "encoder_embed_dim", int),
    Field("num_layers", "encoder_num_layers", int),
    Field("num_heads", "encoder_num_heads", int),
    Field("ffn_dim", "encoder_ff_interm_features", int),
    Field("layer_norm_first", "encoder_layer_norm_first", bool),
    Field("conv_bias", "extractor_conv_bias", bool, False),
    Field("pos_conv_kernel", "encoder_pos_conv_kernel", int, 128),
    Field("pos_conv_groups", "encoder_pos_conv_groups", int, 16),
    Field("dropout", "encoder_dropout", float, 0.1),
    Field("attention_dropout", "encoder_attention_dropout", float, 0.1),
    Field("activation_dropout", "encoder_ff_interm_dropout", float, 0.0),
    Field("input_dropout", "encoder_projection_dropout", float, 0.1),
    Field("layer_drop", "encoder_layer_drop", float, 0.05),
)

# Hugging Face Wav2Vec2Config / HubertConfig (conv stack, norm, mask probability: importer/exporter)
HF_FIELDS: tuple[Field, ...] = (
    Field("conv_bias", "conv_bias", bool, False),
    Field("embed_dim", "hidden_size", int),
    Field("num_layers", "num_hidden_layers", int),
    Field("num_heads", "num_attention_heads", int),
    Field("ffn_dim", "intermediate_size", int),
    Field("layer_norm_first", "do_stable_layer_norm", bool, False),
    Field("pos_conv_kernel", "num_conv_pos_embeddings", int, 128),
    Field("pos_conv_groups", "num_conv_pos_embedding_groups", int, 16),
    Field("layer_norm_eps", "layer_norm_eps", float, 1e-5),
    Field("dropout", "hidden_dropout", float, 0.1),
    Field("attention_dropout", "attention_dropout", float, 0.1),
    Field("activation_dropout", "activation_dropout", float, 0.0),
    Field("input_dropout", "feat_proj_dropout", float, 0.1),
    Field("target_dropout", "feat_quantizer_dropout", float, 0.0),
    Field("layer_drop", "layerdrop", float, 0.05),
    Field("mask_span", "mask_time_length", int, 10),
    Field("min_masks", "mask_time_min_masks", int, 2),
    Field("num_groups", "num_codevector_groups", int, 2),
    Field("num_vars", "num_codevectors_per_group", int, 320),
    Field("vq_dim", "codevector_dim", int, 256),
    Field("final_dim", "proj_codevector_dim", int, 256),
    Field("num_negatives", "num_negatives", int, 100),
    Field("logit_temperature", "contrastive_logits_temperature", float, 0.1),
    Field("diversity_weight", "diversity_loss_weight", float, 0.1),
)

# Hugging Face settings speechssl's model has no switch for: the only value it can import.
HF_FIXED: dict[str, Any] = {"feat_extract_activation": "gelu", "hidden_act": "gelu", "add_adapter": False,
                            "feat_proj_layer_norm": True, "conv_pos_batch_norm": False}


def missing_fields(foreign: Mapping[str, Any], fields: tuple[Field, ...]) -> list[str]:
    """Foreign keys of required fields that ``foreign`` lacks, in table order."""
    return [f.theirs for f in fields if f.default is REQUIRED and f.theirs not in foreign]


def read_fields(foreign: Mapping[str, Any], fields: tuple[Field, ...], where: str) -> dict[str, Any]:
    """``{our_field: value}`` from a foreign config dict through ``fields``.

    Raises:
        ForeignCheckpointError: naming ``where`` and the missing required keys, or a key whose value
            cannot be cast.
    """
    absent = missing_fields(foreign, fields)
    if absent:
        raise ForeignCheckpointError(f"{where}: missing keys {absent}")
    out: dict[str, Any] = {}
    for f in fields:
        value = foreign.get(f.theirs, f.default)
        try:
            out[f.ours] = f.cast(value)
        except (TypeError, ValueError):
            raise ForeignCheckpointError(f"{where}: {f.theirs}={value!r} is not a valid {f.cast.__name__}") from None
    return out


def write_fields(cfg: Wav2Vec2Config | HubertConfig, fields: tuple[Field, ...]) -> dict[str, Any]:
    """``{their_key: our value}``: the inverse of :func:`read_fields` (exporters)."""
    return {f.theirs: getattr(cfg, f.ours) for f in fields}


def fields_for(config_cls: type, fields: tuple[Field, ...]) -> tuple[Field, ...]:
    """The rows of ``fields`` whose ``ours`` is a field of ``config_cls`` (HuBERT: no quantizer rows)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return tuple(f for f in fields if f.ours in names)


def key_table(cfg: Wav2Vec2Config | HubertConfig, style: str) -> list[tuple[str, list[str]]]:
    """``[(our_key, [their_keys])]`` for ``style`` ``"torchaudio"`` or ``"hf"``.

    A list of several foreign keys means "concatenate along dim 0" (our fused q/k/v projection).
    """
    if style == "torchaudio":
        proj, enc = "encoder.feature_projection.", "encoder.transformer."
    elif style == "hf":
        proj, enc = "feature_projection.", "encoder."
    else:
        raise ValueError(f"unknown key style {style!r}; choices: torchaudio, hf")
    table: list[tuple[str, list[str]]] = []

    def add(ours: str, theirs: str | list[str], params: tuple[str, ...] = ("weight", "bias")) -> None:
        for p in params:
            names = [theirs] if isinstance(theirs, str) else theirs
            table.append((f"{ours}.{p}", [f"{t}.{p}" for t in names]))

    for i, _ in enumerate(cfg.conv_layers):
        add(f"feature_encoder.layers.{i}.conv", f"feature_extractor.conv_layers.{i}.conv",
            ("weight", "bias") if cfg.conv_bias else ("weight",))
        if cfg.conv_norm == "layer_norm" or (cfg.conv_norm == "group_norm" and i == 0):
            add(f"feature_encoder.layers.{i}.norm", f"feature_extractor.conv_layers.{i}.layer_norm")
    add("feature_projection.layer_norm", proj + "layer_norm")
    add("feature_projection.projection", proj + "projection")
    add("encoder.pos_conv.conv", enc + "pos_conv_embed.conv",
        ("bias", "parametrizations.weight.original0", "parametrizations.weight.original1"))
    add("encoder.layer_norm", enc + "layer_norm")
    for i in range(cfg.num_layers):
        ours, theirs = f"encoder.layers.{i}.", f"{enc}layers.{i}."
        add(ours + "attention.qkv", [theirs + f"attention.{n}_proj" for n in ("q", "k", "v")])
        add(ours + "attention.out_proj", theirs + "attention.out_proj")
        add(ours + "attn_norm", theirs + "layer_norm")
        add(ours + "ffn.fc1", theirs + "feed_forward.intermediate_dense")
        add(ours + "ffn.fc2", theirs + "feed_forward.output_dense")
        add(ours + "ffn_norm", theirs + "final_layer_norm")
    if isinstance(cfg, HubertConfig):  # Hugging Face HubertModel has no pretraining head
        if style == "hf":
            table.append(("mask_emb", ["masked_spec_embed"]))
        else:
            table.append(("mask_emb", ["mask_generator.mask_embedding"]))
            table.append(("head.label_embeddings", ["logit_generator.label_embeddings"]))
            add("head.final_proj", "logit_generator.final_proj")
    elif style == "hf":
        table.append(("mask_emb", ["masked_spec_embed"]))
        table.append(("quantizer.codevectors", ["quantizer.codevectors"]))
        add("quantizer.weight_proj", "quantizer.weight_proj")
        add("project_q", "project_q")
        add("final_proj", "project_hid")
    else:
        table.append(("mask_emb", ["mask_generator.mask_embedding"]))
    return table
