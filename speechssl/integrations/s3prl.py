"""Any speechssl encoder as an s3prl (0.4.18) upstream, registered as ``s3prl.hub.speechssl_local``.

Usage::

    from speechssl.integrations.s3prl import register
    register()                                   # shims + s3prl.hub.speechssl_local
    from s3prl.nn import S3PRLUpstream, Featurizer
    upstream = S3PRLUpstream("speechssl_local", path_or_url="exp/apc/encoder")
    featurizer = Featurizer(upstream)
    hs, hs_len = upstream(wavs, wavs_len)
    feats, feats_len = featurizer(hs, hs_len)

or s3prl's own downstream runner: ``python -m speechssl.integrations.s3prl_run -m train
-u speechssl_local -k exp/apc/encoder -d emotion -c config.yaml -p result/er --device cpu``.

The upstream contract (s3prl ``upstream/example/expert.py``): built as
``Upstream(ckpt=..., model_config=...)``; ``forward(wavs)`` takes a list of 1-D 16 kHz tensors
and returns ``{"hidden_states": [B, T, D] tensors, ...}``; ``get_downsample_rates(key)`` gives
samples per frame. ``ckpt`` is anything :func:`speechssl.load_encoder` accepts (a release
folder, an experiment folder, a checkpoint, a torchaudio/HF folder, or ``logmel``/``fbank``/``mfcc``).
``model_config`` (s3prl's ``-g``) is an optional YAML/JSON file of ``load_encoder`` options,
e.g. ``layers: [layer_1, layer_2, layer_3]``.

Default layers: every layer with the hidden size of the last layer, except the encoder's layer
aliases (``context`` when it is the very same tensor as ``layer_N``; s3prl's Featurizer needs one
size and stride for all layers; APC's 80-dim ``latent`` is dropped, wav2vec 2.0's same-size
``latent`` is kept).

Frames: s3prl expects ``ceil(L / stride)`` frames per utterance (``len(range(0, L, stride))``)
while speechssl frames never run past the signal (``1 + (L - receptive_field) // stride``). Each
utterance's missing tail frames are filled with its last valid frame, so the valid frames are
exactly speechssl's and no zero padding leaks into s3prl's pooling.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechssl.modules.padding import pad_to_batch
from speechssl.upstream import Encoder, load_encoder

log = logging.getLogger(__name__)

HUB_NAME = "speechssl_local"
# keyword arguments s3prl's runners pass to every upstream that have no meaning for a local encoder
_S3PRL_PROTOCOL_KWARGS = ("refresh",)


def default_s3prl_layers(encoder: Encoder) -> list[str]:
    """Layers of one hidden size (the last layer's), without the encoder's layer aliases (a layer
    that is the very same tensor as an earlier one, e.g. APC's ``context`` = ``layer_3``, would
    count twice in s3prl's weighted sum; see :attr:`speechssl.upstream.Encoder.layer_aliases`)."""
    names, sizes, aliases = encoder.layer_names, encoder.hidden_sizes, encoder.layer_aliases
    return [n for n, d in zip(names, sizes) if d == sizes[-1] and n not in aliases]


def _read_model_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"speechssl_local: model_config {path} does not exist")
    text = p.read_text()
    if p.suffix == ".json":
        options = json.loads(text)
    else:
        import yaml

        options = yaml.safe_load(text) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected a mapping of load_encoder options, got {type(options).__name__}")
    return options


class SpeechSSLUpstream(nn.Module):
    """s3prl upstream expert around :class:`speechssl.upstream.Encoder`.

    Args:
        ckpt: anything :func:`speechssl.load_encoder` accepts.
        model_config: optional YAML/JSON file of ``load_encoder`` options.
        **options: ``load_encoder`` options (``layers``, ``device``, ...), overriding ``model_config``.
    """

    def __init__(self, ckpt: str, model_config: str | None = None, **options: Any):
        super().__init__()
        for key in _S3PRL_PROTOCOL_KWARGS:
            options.pop(key, None)
        options = {**_read_model_config(model_config), **options}
        explicit_layers = "layers" in options
        self.encoder = load_encoder(ckpt, **options)
        if not explicit_layers:
            layers = default_s3prl_layers(self.encoder)
            self.encoder = load_encoder(ckpt, **{**options, "layers": layers})
        sizes = self.encoder.hidden_sizes
        if len(set(sizes)) != 1:
            log.warning("speechssl_local: layers %s have sizes %s; s3prl's Featurizer needs one size",
                        self.encoder.layer_names, sizes)
        log.info("speechssl_local: %s (%s), layers %s, %d samples per frame", self.encoder.source,
                 self.encoder.kind, self.encoder.layer_names, self.encoder.frame_shift)

    @property
    def layer_names(self) -> list[str]:
        return self.encoder.layer_names

    def get_downsample_rates(self, key: str) -> int:
        return self.encoder.frame_shift

    def forward(self, wavs: list[torch.Tensor]) -> dict[str, Any]:
        """wavs: list of [samples_i] 16 kHz tensors -> ``{"hidden_states": [B, ceil(max/stride), D] ...}``."""
        if not wavs:
            raise ValueError("speechssl_local: empty batch")
        device = next(iter(self.encoder.parameters()), torch.empty(0)).device
        padded, lengths = pad_to_batch([w.reshape(-1) for w in wavs], device=device)
        out = self.encoder(padded, lengths)
        stride = self.encoder.frame_shift
        expected = (lengths - 1) // stride + 1  # len(range(0, L, stride))
        total = int(expected.max())
        valid = out.lengths.cpu().clamp(min=1)
        index = torch.arange(total)[None, :].expand(len(wavs), total)
        index = torch.minimum(index, valid[:, None] - 1)  # repeat each utterance's last valid frame
        hidden = []
        for h in out.hidden_states:
            if h.shape[1] == 0:
                h = h.new_zeros(h.shape[0], 1, h.shape[2])
            gather = index.to(h.device).clamp(max=h.shape[1] - 1)[..., None].expand(-1, -1, h.shape[2])
            hidden.append(torch.gather(h, 1, gather))
        result: dict[str, Any] = {"hidden_states": hidden, "last_hidden_state": hidden[-1]}
        for i, h in enumerate(hidden):
            result[f"hidden_state_{i}"] = h
        return result


def speechssl_local(ckpt: str, *args: Any, **kwargs: Any) -> SpeechSSLUpstream:
    """s3prl hub entry: ``S3PRLUpstream("speechssl_local", path_or_url=<encoder>)`` / ``-u speechssl_local -k <encoder>``."""
    if args:
        kwargs = {"model_config": args[0], **kwargs}
    return SpeechSSLUpstream(ckpt, **kwargs)


def register(name: str = HUB_NAME):
    """Apply the s3prl compatibility shims, import ``s3prl.hub`` and add ``speechssl_local`` to it."""
    from speechssl.integrations.s3prl_compat import import_s3prl_hub

    hub = import_s3prl_hub()
    setattr(hub, name, speechssl_local)
    return hub
