"""Export a speechssl APC encoder as a checkpoint s3prl's own ``apc_local`` upstream loads.

Usage::

    speechssl export s3prl-apc --encoder exp/apc/encoder --out apc_s3prl.ckpt
    # then, in s3prl: S3PRLUpstream("apc_local", path_or_url="apc_s3prl.ckpt")
    #                 python run_downstream.py -u apc_local -k apc_s3prl.ckpt ...

s3prl 0.4.18's APC (``s3prl/upstream/apc``) is a plain dict checkpoint, read with ``torch.load``:

* ``config.data.audio``: ``feat_type: fbank``, ``feat_dim``, ``cmvn`` (per-utterance mean and
  variance) and any ``torchaudio.compliance.kaldi.fbank`` keyword arguments; the window is
  always Hamming;
* ``config.model.paras``: ``num_layers``, ``hidden_size``, ``dropout``, ``residual``;
* ``model``: ``rnn_layers.{i}.*`` (one single-layer GRU each) and ``postnet.*``.

Its hidden states are the outputs of GRU layers 1, 2 and 3, i.e. speechssl's ``layer_1``,
``layer_2``, ``layer_3``. What can be exported, else a clear error: an APC model with exactly
3 GRU layers, no prenet, no VQ, no residual on the first layer (input width != hidden size),
and a ``fbank`` frontend with ``window_type: hamming`` and ``cmvn`` ``none`` or ``utterance``
(with ``cmvn_norm_vars``). With ``cmvn: none`` s3prl reproduces our hidden states to float
rounding; with ``utterance`` s3prl divides by the unbiased std (n - 1) where speechssl uses the
population std (n), which changes features by about ``1 / (2n)`` relative for ``n`` frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from speechssl.utils import atomic_path

S3PRL_APC_LAYERS = ["layer_1", "layer_2", "layer_3"]
_NOT_FBANK_KWARGS = ("num_mel_bins", "window_type", "sample_frequency")


class ExportError(ValueError):
    """The encoder cannot be represented in the target format; the message says why."""


def _apc_model(encoder_or_path: Any):
    from speechssl.models.apc import APC
    from speechssl.upstream import Encoder, load_encoder

    enc = encoder_or_path if isinstance(encoder_or_path, Encoder) else load_encoder(encoder_or_path)
    model = enc.backbone
    if not isinstance(model, APC):
        raise ExportError(f"{enc.source}: s3prl-apc export needs an APC encoder, got {type(model).__name__}")
    return enc, model


def s3prl_apc_checkpoint(encoder_or_path: Any) -> dict:
    """The s3prl ``apc_local`` checkpoint dict of an APC encoder (see the module docstring)."""
    from speechssl.features.kaldi import kaldi_kwargs
    from speechssl.modules.recurrent import RNNStack

    enc, model = _apc_model(encoder_or_path)
    cfg = model.config
    where = enc.source
    if not isinstance(model.context, RNNStack) or cfg.context != "gru":
        raise ExportError(f"{where}: s3prl's APC is a GRU stack; this model's context is {cfg.context!r}")
    if cfg.num_layers != 3:
        raise ExportError(f"{where}: s3prl's apc_local supports exactly 3 GRU layers, this model has {cfg.num_layers}")
    if model.prenet is not None:
        raise ExportError(f"{where}: s3prl's APC has no prenet; this model has {cfg.prenet_layers} prenet layers")
    if cfg.vq is not None:
        raise ExportError(f"{where}: VQ-APC layers are not exported (s3prl's vq_apc uses another VQ layer)")
    frontend = model.frontend
    fcfg = frontend.config
    if frontend.name != "fbank":
        raise ExportError(f"{where}: s3prl's APC computes Kaldi fbank; this model's frontend is {frontend.name!r}")
    if fcfg.window_type != "hamming":
        raise ExportError(f"{where}: s3prl's APC always uses a Hamming window; this fbank uses {fcfg.window_type!r}")
    if fcfg.cmvn not in ("none", "utterance") or (fcfg.cmvn == "utterance" and not fcfg.cmvn_norm_vars):
        raise ExportError(
            f"{where}: s3prl's APC supports no CMVN or per-utterance mean+variance CMVN; this fbank has "
            f"cmvn={fcfg.cmvn!r}, cmvn_norm_vars={fcfg.cmvn_norm_vars}"
        )
    residual = bool(cfg.residual)
    in_dim = int(frontend.out_dim)
    if residual and in_dim == cfg.hidden_size:
        raise ExportError(
            f"{where}: input width == hidden size ({in_dim}) gives speechssl a residual on layer 1, "
            "which s3prl's APC never adds"
        )
    audio = {"feat_type": "fbank", "feat_dim": int(fcfg.num_mel_bins), "cmvn": fcfg.cmvn == "utterance"}
    audio.update({k: v for k, v in kaldi_kwargs(fcfg).items() if k not in _NOT_FBANK_KWARGS})
    state = {}
    for i, gru in enumerate(model.context.layers):
        if not isinstance(gru, torch.nn.GRU) or gru.num_layers != 1:
            raise ExportError(f"{where}: context layer {i} is not a single-layer GRU")
        for name, tensor in gru.state_dict().items():
            state[f"rnn_layers.{i}.{name}"] = tensor.detach().cpu().clone()
    for name, tensor in model.postnet.state_dict().items():
        state[f"postnet.{name}"] = tensor.detach().cpu().clone()
    if state["postnet.weight"].shape != (in_dim, cfg.hidden_size):
        raise ExportError(f"{where}: postnet maps {tuple(state['postnet.weight'].shape)}, expected ({in_dim}, H)")
    return {
        "config": {
            "data": {"audio": audio},
            "model": {"paras": {"num_layers": 3, "hidden_size": int(cfg.hidden_size), "dropout": float(cfg.dropout),
                                "residual": residual}},
        },
        "model": state,
        "speechssl": {"source": str(enc.source), "layers": S3PRL_APC_LAYERS},
    }


def export_s3prl_apc(encoder_or_path: Any, out: str | Path) -> Path:
    """Write :func:`s3prl_apc_checkpoint` to ``out`` atomically (tensors and plain containers only)."""
    ckpt = s3prl_apc_checkpoint(encoder_or_path)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return out
