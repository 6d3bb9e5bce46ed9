"""Export a speechssl wav2vec 2.0 or HuBERT model as a Hugging Face ``transformers`` folder.

``export_hf(model, folder)`` writes

* ``config.json``: a ``Wav2Vec2Config`` (``model_type: wav2vec2``, architecture ``Wav2Vec2ForPreTraining``),
* ``model.safetensors``: ``wav2vec2.*`` encoder weights (our fused q/k/v split back into
  ``q_proj``/``k_proj``/``v_proj``) plus ``quantizer.*``, ``project_q`` and ``project_hid``,
* ``preprocessor_config.json``: a ``Wav2Vec2FeatureExtractor`` (16 kHz, ``do_normalize`` from our
  waveform frontend).

``transformers.Wav2Vec2Model.from_pretrained(folder)`` (or ``Wav2Vec2ForPreTraining``) then
gives our hidden states: HF ``hidden_states[k]`` == our ``layer_k`` for k < N and
``last_hidden_state`` == our ``context``. Only waveform-frontend models with a ``group_norm`` or
``layer_norm`` conv stack can be expressed in that format; anything else is refused.
Writes are atomic per file; nothing is pickled.

A speechssl HuBERT becomes a ``HubertConfig`` (``model_type: hubert``, architecture ``HubertModel``)
with the encoder weights under ``HubertModel`` names (``masked_spec_embed`` = our ``mask_emb``);
``transformers.HubertModel.from_pretrained(folder)`` gives our hidden states the same way. Its
pretraining head (``final_proj``, label embeddings) has no Hugging Face counterpart and is not
written (keep the speechssl release folder to continue pretraining). MelHuBERT configs (no CNN)
cannot be expressed and are refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from speechssl.models.hubert import HubertConfig, HubertModel
from speechssl.models.wav2vec2 import Wav2Vec2Model
from speechssl.upstream.foreign_tables import HF_FIELDS, HF_FIXED, fields_for, key_table, write_fields
from speechssl.utils import atomic_path, atomic_write_json

# HuBERT fields written to a HubertConfig (its pretraining-head settings have no HF key)
HF_HUBERT_FIELDS = tuple(f for f in fields_for(HubertConfig, HF_FIELDS) if f.ours not in ("final_dim", "logit_temperature"))


def hf_config(model: Wav2Vec2Model | HubertModel) -> dict:
    """The Hugging Face ``Wav2Vec2Config`` / ``HubertConfig`` dict describing ``model``."""
    cfg = model.config
    frontend = dict(cfg.frontend)
    if frontend.get("name") != "waveform" or set(frontend) - {"name", "normalize"}:
        raise ValueError(f"export_hf: only waveform-frontend models can be exported to Hugging Face, "
                         f"this one has frontend {frontend}")
    if cfg.conv_norm not in ("group_norm", "layer_norm") or not cfg.conv_layers:
        raise ValueError(f"export_hf: conv_norm {cfg.conv_norm!r} with {len(cfg.conv_layers)} conv layers has no "
                         "Hugging Face equivalent (group_norm or layer_norm, at least one layer)")
    hubert = isinstance(model, HubertModel)
    return {
        "model_type": "hubert" if hubert else "wav2vec2",
        "architectures": ["HubertModel" if hubert else "Wav2Vec2ForPreTraining"],
        "conv_dim": [c for c, _, _ in cfg.conv_layers],
        "conv_kernel": [k for _, k, _ in cfg.conv_layers],
        "conv_stride": [s for _, _, s in cfg.conv_layers],
        "num_feat_extract_layers": len(cfg.conv_layers),
        "feat_extract_norm": "group" if cfg.conv_norm == "group_norm" else "layer",
        **write_fields(cfg, HF_HUBERT_FIELDS if hubert else HF_FIELDS),
        **{k: v for k, v in HF_FIXED.items() if k in ("feat_extract_activation", "hidden_act", "add_adapter")},
        **({"feat_proj_layer_norm": True, "conv_pos_batch_norm": False} if hubert else {}),
        "final_dropout": 0.0,
        "mask_time_prob": min(1.0, cfg.mask_prob * cfg.mask_span),
        "apply_spec_augment": True,
    }


def hf_state_dict(model: Wav2Vec2Model | HubertModel) -> dict[str, torch.Tensor]:
    """Our weights under ``Wav2Vec2ForPreTraining`` / ``HubertModel`` names (inverse of the importer's table)."""
    ours = model.state_dict()
    hubert = isinstance(model, HubertModel)
    out: dict[str, torch.Tensor] = {}
    for key, names in key_table(model.config, "hf"):
        tensor = ours[key].detach().cpu()
        parts = tensor.chunk(len(names), dim=0) if len(names) > 1 else (tensor,)
        for name, part in zip(names, parts):
            prefix = "" if hubert or name.startswith(("quantizer.", "project_q.", "project_hid.")) else "wav2vec2."
            out[prefix + name] = part.contiguous().clone()
    return out


def export_hf(model: Wav2Vec2Model | HubertModel, folder: str | Path) -> Path:
    """Write ``model`` to ``folder`` as config.json + model.safetensors + preprocessor_config.json."""
    if not isinstance(model, (Wav2Vec2Model, HubertModel)):
        raise ValueError(f"export_hf: expected a speechssl wav2vec2 or hubert model, got {type(model).__name__}")
    folder = Path(folder)
    config = hf_config(model)
    state = hf_state_dict(model)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(folder / "config.json", config)
    atomic_write_json(
        folder / "preprocessor_config.json",
        {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "feature_size": 1,
            "sampling_rate": 16000,
            "padding_side": "right",
            "padding_value": 0.0,
            "do_normalize": bool(model.config.frontend.get("normalize", False)),
            # group-norm models were trained without attention masks (HF convention)
            "return_attention_mask": model.config.conv_norm == "layer_norm",
        },
    )
    return folder
