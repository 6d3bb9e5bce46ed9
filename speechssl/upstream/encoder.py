"""The frozen-encoder interface every downstream, extractor and integration uses.

An :class:`Encoder` wraps a *backbone*: any module with ``encode(wavs, lengths) ->
EncoderOutput``, ``layer_names`` and ``frame_shift`` — a pretrained :class:`SSLModel`
(APC, CPC, wav2vec 2.0, an imported torchaudio / Hugging Face model) or a baseline frontend
(:mod:`speechssl.upstream.baselines`). The backbone owns its frontend, so callers always
pass raw 16 kHz waveforms and the preprocessing the model was trained with is applied::

    enc = speechssl.load_encoder("exp/apc/encoder", layers=["context", "latent"])
    out = enc(wavs, lengths)        # wavs [B, L] float32 16 kHz zero-padded; lengths [B]
    out.hidden_states               # list of [B, T, D], one per selected layer
    out.lengths                     # [B] valid frames
    out.layer_names                 # ["context", "latent"]
    out.frame_shift                 # samples per frame (160 = 10 ms, 320 = 20 ms)

Layer names: ``latent`` (the feature encoder's output z), ``layer_1`` ... ``layer_N``
(context-network layers), ``context`` (the last layer c). Baselines have one layer named
``features``. For any encoder ``"context"`` also means its last layer and ``"latent"`` its first
one when no layer has that exact name, and integers index ``layer_names`` (``-1`` = last).

Valid frames never see padding, so a batch gives the same features as one utterance at a time
(s3prl's ``test_upstream.py`` checks the same property for its upstreams).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from speechssl.models.base import EncoderOutput
from speechssl.upstream.layers import LayerSelection
from speechssl.utils import checked_device

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_PROBE_SAMPLES = SAMPLE_RATE  # one second of silence: enough frames for every family


@dataclasses.dataclass
class EncoderOptions:
    """Options accepted by :func:`speechssl.load_encoder` for every kind of encoder."""

    layers: Any = "all"  # "all", "context,latent", a list of names / indices, or a LayerSelection
    device: str = "cpu"  # where the encoder runs ("cpu", "cuda", "cuda:1")
    trainable: bool = False  # False: eval mode and no autograd graph (a frozen upstream)
    # fp32 | bf16: bf16 runs matmuls/convolutions under autocast (3.4x faster wav2vec2 Base on
    # CPUs with avx512_bf16/AMX, last-layer differences ~1e-1); outputs are returned as float32.
    precision: Literal["fp32", "bf16"] = "fp32"


def option_names() -> list[str]:
    return [f.name for f in dataclasses.fields(EncoderOptions)]


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` are one tensor (or views of the same memory with one layout)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


class Encoder(nn.Module):
    """A frozen (by default) feature extractor over 16 kHz waveforms.

    Args:
        backbone: module with ``encode(wavs, lengths) -> EncoderOutput``, ``layer_names`` and
            ``frame_shift`` (an :class:`SSLModel` or a baseline).
        options: :class:`EncoderOptions`.
        source: where it came from (a path or a baseline name), for messages and ``describe()``.
        kind: ``released`` | ``checkpoint`` | ``foreign`` | ``baseline`` | ``model``.
    """

    def __init__(self, backbone: nn.Module, options: EncoderOptions | None = None, source: str = "",
                 kind: str = "model"):
        super().__init__()
        self.backbone = backbone
        self.options = options or EncoderOptions()
        if self.options.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.options.precision!r}")
        self.source = source
        self.kind = kind
        self.selection = LayerSelection.parse(self.options.layers)
        resolved = self.selection.resolve(list(backbone.layer_names))
        self._indices, self._names = resolved.indices, resolved.names
        self._hidden_sizes: list[int] | None = None
        self._aliases: dict[str, str] | None = None
        self.backbone.to(checked_device(self.options.device))
        self.trainable = bool(self.options.trainable)
        for p in self.backbone.parameters():
            p.requires_grad_(self.trainable)
        self.train(self.trainable)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return torch.device(self.options.device)

    @property
    def layer_names(self) -> list[str]:
        """Names of the hidden states ``forward`` returns, in order."""
        return list(self._names)

    @property
    def all_layer_names(self) -> list[str]:
        """Every layer the backbone has (what ``layers=`` can choose from)."""
        return list(self.backbone.layer_names)

    @property
    def frame_shift(self) -> int:
        """Samples (16 kHz) between frames."""
        return int(self.backbone.frame_shift)

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.frame_shift

    def _probe(self) -> None:
        """Encode one second of silence once: the selected layers' sizes and which of them are
        aliases (the very same tensor as an earlier selected layer)."""
        with torch.no_grad():
            wav = torch.zeros(1, _PROBE_SAMPLES, device=self.device)
            n = torch.tensor([_PROBE_SAMPLES], device=self.device)
            if self.options.precision == "bf16":
                with torch.autocast(device_type=wav.device.type, dtype=torch.bfloat16):
                    out = self.backbone.encode(wav, n)
            else:
                out = self.backbone.encode(wav, n)
        hidden = [out.hidden_states[i] for i in self._indices]
        self._hidden_sizes = [int(h.shape[-1]) for h in hidden]
        self._aliases = {}
        for j, h in enumerate(hidden):
            for i in range(j):
                if _same_tensor(hidden[i], h):
                    self._aliases[self._names[j]] = self._names[i]
                    break

    @property
    def hidden_sizes(self) -> list[int]:
        """Feature dimension of each selected layer (found by encoding one second of silence)."""
        if self._hidden_sizes is None:
            self._probe()
        return list(self._hidden_sizes)

    @property
    def layer_aliases(self) -> dict[str, str]:
        """``{layer: earlier selected layer}`` for each selected layer the backbone returns as the
        very same tensor as an earlier one (APC's and CPC's ``context`` is their last ``layer_N``;
        a pre-LN wav2vec 2.0's ``context`` is a layer norm of it, so not an alias). A weighted sum
        over ``all`` leaves aliases out. Structural, not a comparison of values."""
        if self._aliases is None:
            self._probe()
        return dict(self._aliases)

    @property
    def role(self) -> str:
        """``ssl`` | ``control`` | ``baseline``: what this encoder is in a comparison, from the
        released encoder's ``config.json`` (see :func:`speechssl.upstream.release.encoder_role`);
        baselines are ``baseline``; anything else (a checkpoint, a foreign model) is ``ssl``."""
        return self.role_info()["role"]

    def role_info(self) -> dict:
        """``{"role": ..., "control_of": name or None, "architecture": hash or None}``."""
        if self.kind == "baseline":
            return {"role": "baseline", "control_of": None, "architecture": None}
        if self.kind == "released":
            from speechssl.upstream.release import encoder_role, read_release_config

            return encoder_role(read_release_config(self.source))
        return {"role": "ssl", "control_of": None, "architecture": None}

    @property
    def hidden_size(self) -> int:
        """The hidden size shared by every selected layer; an error if they differ."""
        sizes = self.hidden_sizes
        if len(set(sizes)) != 1:
            pairs = ", ".join(f"{n}={d}" for n, d in zip(self.layer_names, sizes))
            raise ValueError(f"selected layers have different sizes ({pairs}); select layers of one size")
        return sizes[0]

    @property
    def frontend(self) -> nn.Module | None:
        return getattr(self.backbone, "frontend", None)

    def describe(self) -> dict:
        """Plain-dict summary (source, kind, role, layers, sizes, frame shift) for logs and indexes."""
        return {
            "source": self.source,
            "kind": self.kind,
            "role": self.role,
            "layers": self.layer_names,
            "hidden_sizes": self.hidden_sizes,
            "frame_shift": self.frame_shift,
            "frontend": self.frontend.to_dict() if hasattr(self.frontend, "to_dict") else None,
        }

    def weights_sha256(self) -> str:
        """SHA-256 of the backbone's state (every parameter and buffer: names, dtypes, shapes,
        values): features from two encoders with the same hash are the same features. Retraining
        the encoder at the same path changes it; copying its folder does not."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.backbone.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(memoryview(t.view(torch.uint8).numpy()))
        return digest.hexdigest()

    def train(self, mode: bool = True) -> Encoder:
        # A frozen encoder stays in eval mode (no dropout, no masking) even inside a training model.
        return super().train(mode and self.trainable)

    # ------------------------------------------------------------------ forward
    def _encode(self, wavs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        if self.options.precision == "bf16":
            with torch.autocast(device_type=wavs.device.type, dtype=torch.bfloat16):
                out = self.backbone.encode(wavs, lengths)
            hidden = [out.hidden_states[i].float() for i in self._indices]
            return EncoderOutput(hidden, out.lengths, list(self._names), int(out.frame_shift))
        out = self.backbone.encode(wavs, lengths)
        hidden = [out.hidden_states[i] for i in self._indices]
        return EncoderOutput(hidden, out.lengths, list(self._names), int(out.frame_shift))

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Encode a zero-padded batch.

        Args:
            wavs (Tensor): [batch, samples] float32 at 16 kHz (a 1-D tensor is one utterance).
            lengths (Tensor): [batch] valid samples (default: all samples valid).
        Returns:
            EncoderOutput: ``hidden_states`` list of [batch, frames, dim] (frames past
            ``lengths`` are padding), ``lengths`` [batch] valid frames, ``layer_names``, ``frame_shift``.
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(f"expected wavs of shape [batch, samples], got {tuple(wavs.shape)}")
        if lengths is None:
            lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        if lengths.shape != (wavs.shape[0],):
            raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected ({wavs.shape[0]},)")
        if int(lengths.max()) > wavs.shape[1]:
            raise ValueError(f"a length ({int(lengths.max())}) exceeds the padded size {wavs.shape[1]}")
        wavs = wavs.to(self.device, torch.float32)
        lengths = lengths.to(self.device)
        if self.trainable and torch.is_grad_enabled():
            return self._encode(wavs, lengths)
        with torch.no_grad():
            return self._encode(wavs, lengths)

    def encode_wav(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> EncoderOutput:
        """Encode one utterance given at any rate: [samples] or [channels, samples].

        Other rates are resampled to 16 kHz and channels averaged, each with a warning.
        """
        from speechssl.audio import resample

        x = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav, dtype=torch.float32)
        if x.dim() == 2:
            log.warning("encode_wav: averaging %d channels to mono", x.shape[0])
            x = x.mean(dim=0)
        if x.dim() != 1:
            raise ValueError(f"expected [samples] or [channels, samples], got {tuple(x.shape)}")
        if sample_rate != SAMPLE_RATE:
            log.warning("encode_wav: resampling %d Hz to %d Hz", sample_rate, SAMPLE_RATE)
            x = resample(x, sample_rate, SAMPLE_RATE)
        return self(x.unsqueeze(0), torch.tensor([x.numel()]))

    def extra_repr(self) -> str:
        return f"source={self.source!r}, kind={self.kind}, layers={self.layer_names}, frame_shift={self.frame_shift}"
