"""Contrastive Predictive Coding (CPC; van den Oord et al. 2018) and modified CPC (Riviere et al. 2020).

Reference code: ``facebookresearch/CPC_audio`` (``cpc/model.py``, ``cpc/criterion/criterion.py``);
s3prl's ``upstream/cpc``. The model::

    f  = frontend(wav)               # "waveform" [B, L, 1] or log-Mel frames [B, T, D]
    z  = encoder(f)                  # [B, T, C] "latent": strided convs (waveform) or frame MLP (log-Mel)
    c  = context(z)                  # [B, T, H] GRU/LSTM stack or causal Transformer
    p_k = predictor(c)[:, :, k-1]    # [B, T, C] one linear W_k per step, or a causal Transformer + W_k
    loss = InfoNCE(p_k(t) vs z(t+k) and N negatives)   (speechssl.modules.infonce)

The conv encoder uses no padding, so frame ``t`` covers samples ``[S t, S t + R)`` with total
stride ``S`` and receptive field ``R`` (paper encoder: S = 160, R = 465) and
``frames(L) = 0 if L < R else 1 + (L - R) // S``: valid frames never see padding and batched
output equals single output. Normalisation: ``"channel"`` (modified CPC's channel norm: each
frame normalised over its channels, learned per-channel scale/shift), ``"batch"`` (the original;
in training its statistics include padding frames, in ``encode`` it uses running statistics) or
``"none"``.

Frozen features (:meth:`CPC.encode`): ``latent`` (z), ``layer_1..N`` (context layers),
``context`` (= ``layer_N``).

Parameters of encoder + context (what SUPERB counts; the predictor is training-only):
:func:`cpc_modified` 1,843,456 (SUPERB: 1.84 M for modified CPC; 2,560 of them are the channel-norm
scales/shifts); :func:`cpc_paper` 5,847,040 (+1,579,008 in the 12 W_k).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from speechssl.config import ConfigError
from speechssl.features.base import build_frontend
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel
from speechssl.modules.causal import CausalTransformer
from speechssl.modules.conv import FrameStack
from speechssl.modules.infonce import infonce, sample_negatives
from speechssl.modules.recurrent import RNNStack, lengths_to_mask

logger = logging.getLogger(__name__)

PAPER_CONV = [(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2)]


def _conv(channels: int) -> list[tuple[int, int, int]]:
    return [(channels, k, s) for _, k, s in PAPER_CONV]


@dataclasses.dataclass
class CPCConfig:
    """CPC hyper-parameters (defaults: modified CPC, Riviere et al. 2020)."""

    frontend: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "waveform"})
    # "conv": strided convolutions over a 1-dim frontend (waveform); "frame": an MLP applied to
    # every frame of a multi-dim frontend (log-Mel, fbank).
    encoder: Literal["conv", "frame"] = "conv"
    # (channels, kernel, stride) of each conv layer (encoder="conv").
    conv_layers: list[tuple[int, int, int]] = dataclasses.field(default_factory=lambda: _conv(256))
    norm: Literal["channel", "batch", "none"] = "channel"  # conv encoder normalisation
    frame_layers: int = 2  # encoder="frame": Linear + LayerNorm + ReLU layers
    frame_dim: int = 256  # encoder="frame": width
    # encoder="frame": frontend frames concatenated per model frame before the MLP (MelHuBERT's input:
    # 4 log-Mel frames of 10 ms make one of 40 ms); prediction_steps count model frames.
    stack_frames: int = 1
    context: Literal["gru", "lstm", "transformer"] = "lstm"
    context_layers: int = 1
    hidden_size: int = 256  # context width
    num_heads: int = 4  # transformer context / predictor
    ffn_dim: int = 1024  # transformer context / predictor
    dropout: float = 0.0  # context dropout (training only)
    # RNN contexts: run on packed sequences. False gives the same valid frames (padding comes after
    # them in a unidirectional RNN). fp32 CPU GRUs take speechssl's fast GRU on the padded batch
    # either way (speechssl.modules.gru: same valid frames, ~2.4x faster per layer).
    packed_sequences: bool = True
    # "linear": c -> W_k c for k = 1..K (the paper); "transformer": causal Transformer layers
    # shared by all steps, then W_k (modified CPC uses a Transformer prediction head).
    predictor: Literal["linear", "transformer"] = "transformer"
    predictor_layers: int = 1
    prediction_steps: int = 12  # K
    num_negatives: int = 128  # N per query frame
    # Where negatives come from: the same "utterance", the whole "batch", or the same "speaker"
    # (needs batch["speaker"]; without it each utterance counts as its own speaker, with a warning).
    negatives: Literal["utterance", "batch", "speaker"] = "speaker"
    # Extra negatives per query drawn from the whole batch, appended to the num_negatives above: a
    # mix (e.g. same-utterance negatives for content plus batch negatives, which reward encoding the
    # voice). 0: none (the paper and modified CPC).
    batch_negatives: int = 0
    # Keep the encoder (z, the ``latent`` layer and the InfoNCE targets) at its random init and train
    # only the context network and predictor: z stays the random-init control's (as wav2vec 2.0's
    # freeze_projection). The frozen encoder also runs in eval mode (batch norm: the init statistics).
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        for key in ("prediction_steps", "num_negatives", "context_layers", "hidden_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_negatives < 0:
            raise ConfigError(f"model.batch_negatives must be >= 0, got {self.batch_negatives}")
        if self.encoder == "conv" and not self.conv_layers:
            raise ConfigError("model.conv_layers must list at least one (channels, kernel, stride)")
        for i, (ch, k, s) in enumerate(self.conv_layers):
            if ch < 1 or k < 1 or s < 1:
                raise ConfigError(f"model.conv_layers[{i}] = {(ch, k, s)}: all values must be >= 1")
        if self.encoder == "frame" and self.frame_layers < 1:
            raise ConfigError(f"model.frame_layers must be >= 1, got {self.frame_layers}")
        if self.stack_frames < 1 or (self.encoder != "frame" and self.stack_frames != 1):
            raise ConfigError(f"model.stack_frames must be >= 1, and 1 unless model.encoder is 'frame' (got "
                              f"{self.stack_frames} with encoder {self.encoder!r})")


def cpc_paper() -> CPCConfig:
    """van den Oord et al. 2018: 5 x 512 conv + batch norm, GRU 256, 12 linear W_k, batch negatives."""
    return CPCConfig(
        conv_layers=list(PAPER_CONV), norm="batch", context="gru", predictor="linear", negatives="batch"
    )


def cpc_modified() -> CPCConfig:
    """Riviere et al. 2020: 5 x 256 conv + channel norm, LSTM 256, Transformer predictor,
    128 same-speaker negatives."""
    return CPCConfig()


def cpc_tiny() -> CPCConfig:
    """CPU-sized CPC: log-Mel (40 bands, no CMVN: level and spectral tilt are style/speaker cues)
    -> 2-layer frame MLP 128 -> LSTM 256, 8 linear steps, 32 negatives from the batch (so speaker
    cues help discriminate)."""
    return CPCConfig(
        frontend={"name": "logmel", "n_mels": 40, "cmvn": "none"},
        encoder="frame",
        frame_layers=2,
        frame_dim=128,
        context="lstm",
        hidden_size=256,
        predictor="linear",
        prediction_steps=8,
        num_negatives=32,
        negatives="batch",
    )


class ConvEncoder(nn.Module):
    """Strided 1-D convs without padding: [B, L, in_dim] -> [B, T, C], exact output lengths."""

    def __init__(self, in_dim: int, layers: list[tuple[int, int, int]], norm: str):
        super().__init__()
        self.specs = [tuple(x) for x in layers]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        prev = in_dim
        for ch, k, s in self.specs:
            self.convs.append(nn.Conv1d(prev, ch, k, stride=s))
            if norm == "channel":
                self.norms.append(nn.LayerNorm(ch))  # per-frame over channels == CPC_audio ChannelNorm
            elif norm == "batch":
                self.norms.append(nn.BatchNorm1d(ch))
            else:
                self.norms.append(nn.Identity())
            prev = ch
        self.norm = norm
        self.out_dim = prev

    @property
    def stride(self) -> int:
        out = 1
        for _, _, s in self.specs:
            out *= s
        return out

    @property
    def receptive_field(self) -> int:
        rf, jump = 1, 1
        for _, k, s in self.specs:
            rf += (k - 1) * jump
            jump *= s
        return rf

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _, k, s in self.specs:
            lengths = torch.clamp(torch.div(lengths - k, s, rounding_mode="floor") + 1, min=0)
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_lengths = self.out_lengths(lengths)
        if self.norm != "batch":
            h = self._channels_last(x)
        else:
            h = self._channels_first(x)
        return h * lengths_to_mask(out_lengths, h.shape[1]).to(h.dtype)[..., None], out_lengths

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, in_dim] -> [B, T, C] without a transpose copy: each conv runs as a 2-D conv on the
        channels-last view ``[B, C, 1, L]`` of the frame-major tensor, and the channel norm is a
        LayerNorm over the last axis. Same numbers as the channels-first path (to 1e-5), and a CPC
        conv stack forward + backward ~25 % faster on CPU (no copies around every LayerNorm)."""
        h = x
        for conv, norm, (_, k, s) in zip(self.convs, self.norms, self.specs):
            if h.shape[1] < k:  # every utterance too short: no frames
                h = h.new_zeros(h.shape[0], 0, conv.out_channels)
                continue
            y = F.conv2d(h.transpose(1, 2).unsqueeze(2), conv.weight.unsqueeze(2), conv.bias, stride=(1, s))
            h = torch.relu(norm(y.squeeze(2).transpose(1, 2).contiguous()))  # a no-op copy: y is channels-last
        return h

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)  # [B, in_dim, L]
        for conv, norm, (_, k, _) in zip(self.convs, self.norms, self.specs):
            if h.shape[-1] < k:  # every utterance too short: no frames
                h = h.new_zeros(h.shape[0], conv.out_channels, 0)
                continue
            h = conv(h)
            if self.norm == "channel":
                h = norm(h.transpose(1, 2)).transpose(1, 2)
            elif self.norm == "batch" and h.shape[-1] > 0:
                h = norm(h)
            h = torch.relu(h)
        return h.transpose(1, 2)


class FrameEncoder(nn.Module):
    """Per-frame MLP (Linear -> LayerNorm -> ReLU) x N: [B, T, D] -> [B, T // stack, dim].

    ``stack`` consecutive frontend frames are concatenated into one model frame first
    (:class:`~speechssl.modules.conv.FrameStack`, as wav2vec 2.0 / HuBERT without a CNN: a trailing
    partial group is dropped), so lengths become ``lengths // stack``.
    """

    def __init__(self, in_dim: int, dim: int, num_layers: int, stack: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(in_dim * stack if i == 0 else dim, dim), nn.LayerNorm(dim), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = dim
        self.stacker = FrameStack(in_dim, stack) if stack > 1 else None
        self.stride = self.receptive_field = stack

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stacker is not None:
            x, lengths = self.stacker(x.transpose(1, 2), lengths)  # FrameStack takes [B, C, T]
        return self.net(x) * lengths_to_mask(lengths, x.shape[1]).to(x.dtype)[..., None], lengths


class Predictor(nn.Module):
    """c [B, T, H] -> predictions [B, T, K, C]: optional causal Transformer, then K linear maps."""

    def __init__(self, hidden: int, out_dim: int, steps: int, transformer: CausalTransformer | None):
        super().__init__()
        self.transformer = transformer
        self.heads = nn.Linear(hidden, steps * out_dim)  # W_1..W_K stacked
        self.steps = steps

    def forward(self, c: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.transformer is not None:
            c = self.transformer(c, lengths)[-1]
        batch, frames, _ = c.shape
        return self.heads(c).view(batch, frames, self.steps, -1)


class CPC(SSLModel):
    """CPC / modified CPC (see the module docstring). Built by :func:`build_cpc`."""

    name = "cpc"

    def __init__(self, config: CPCConfig, frontend: nn.Module, encoder: nn.Module, context: nn.Module, predictor: Predictor):
        super().__init__(config)
        self.frontend = frontend
        self.encoder = encoder
        self.context = context
        self.predictor = predictor
        self._warned_no_speaker = False
        if config.freeze_encoder:
            encoder.requires_grad_(False)  # no gradient, not counted as trained
            encoder.eval()

    def train(self, mode: bool = True) -> CPC:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # frozen: eval semantics always (batch-norm statistics stay the init's)
        return self

    @property
    def frame_shift(self) -> int:
        return int(self.frontend.frame_shift * self.encoder.stride)

    @property
    def receptive_field(self) -> int:
        """Samples seen by one latent frame."""
        return int(self.frontend.frame_length + (self.encoder.receptive_field - 1) * self.frontend.frame_shift)

    @property
    def min_samples(self) -> int:
        """Samples for ``K + 1`` latent frames: one query with all K future targets."""
        return self.receptive_field + self.config.prediction_steps * self.frame_shift

    @property
    def layer_names(self) -> list[str]:
        return ["latent"] + [f"layer_{i + 1}" for i in range(self.config.context_layers)] + ["context"]

    def _run(self, wavs: torch.Tensor, lengths: torch.Tensor):
        feats, n = self.frontend(wavs, lengths)
        z, n_z = self.encoder(feats, n)
        layers = self.context(z, n_z)
        return z, n_z, layers

    def _speaker_ids(self, batch: Mapping[str, Any], size: int, device: torch.device) -> torch.Tensor:
        speakers = batch.get("speaker")
        if speakers is None:
            if not self._warned_no_speaker:
                logger.warning(
                    "CPC negatives='speaker' but the batch has no 'speaker' field: sampling negatives "
                    "from each utterance instead (add speaker labels to the manifest to use speakers)"
                )
                self._warned_no_speaker = True
            return torch.arange(size, device=device)
        if len(speakers) != size:
            raise ValueError(f"batch['speaker'] has {len(speakers)} entries for {size} utterances")
        index: dict[str, int] = {}
        return torch.tensor([index.setdefault(str(s), len(index)) for s in speakers], device=device)

    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """InfoNCE over all valid (frame, step) pairs.

        batch: ``wavs`` [B, L], ``lengths`` [B], optional ``speaker`` list. Metrics: ``infonce``,
        ``acc`` (mean over steps) and ``acc_k1`` .. ``acc_kK`` (positive ranked first; chance is
        ``1 / (N + 1)``).
        """
        wavs, lengths = batch["wavs"], batch["lengths"]
        z, n_z, layers = self._run(wavs, lengths)
        pred = self.predictor(layers[-1], n_z)
        cfg = self.config
        speaker_ids = None
        if cfg.negatives == "speaker":
            speaker_ids = self._speaker_ids(batch, z.shape[0], z.device)
        neg = sample_negatives(n_z, z.shape[1], cfg.num_negatives, cfg.negatives, speaker_ids)
        if cfg.batch_negatives:
            neg = torch.cat([neg, sample_negatives(n_z, z.shape[1], cfg.batch_negatives, "batch")], dim=-1)
        out = infonce(pred, z, n_z, neg)
        metrics = {"infonce": float(out.loss.detach()), "acc": float(out.accuracy.mean())}
        metrics.update({f"acc_k{k + 1}": float(a) for k, a in enumerate(out.accuracy.tolist())})
        return LossOutput(loss=out.loss, metrics=metrics)

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Features of every layer in eval semantics (no dropout; batch norm uses running stats).

        Args:
            wavs (Tensor): [batch, samples] float32 16 kHz, zero-padded.
            lengths (Tensor): [batch] valid samples.

        Returns:
            EncoderOutput with ``latent``, ``layer_1..N``, ``context``, zero beyond ``lengths``.
        """
        was_training = self.training
        self.eval()
        try:
            z, n_z, layers = self._run(wavs, lengths)
        finally:
            self.train(was_training)
        return EncoderOutput(
            hidden_states=[z, *layers, layers[-1]],
            lengths=n_z,
            layer_names=self.layer_names,
            frame_shift=self.frame_shift,
        )


    # ---- long files, chunk by chunk (speechssl.extract.chunking) -------------------------
    def streams_exactly(self) -> bool:
        """Whether :meth:`encode_continued` gives the frames of one pass (GRU/LSTM contexts:
        the state is carried; the causal Transformer context is not streamed)."""
        return isinstance(self.context, RNNStack)

    def encode_continued(self, wavs: torch.Tensor, first: int, last: int | None, state: Any = None):
        """Frames ``first .. last - 1`` of a window of a long file, continuing the recurrence from
        ``state`` (None at the start of the file), in eval semantics.

        Args:
            wavs (Tensor): [1, samples] the window, all valid (its frame ``t`` covers window
                samples ``[t S, t S + R)``, see the module docstring).
            first, last: latent frames of the window to return (``last`` None: to the end).
            state: what the previous call returned.
        Returns:
            (EncoderOutput, state): ``latent``, ``layer_1..N``, ``context`` of the kept frames
            ([1, last - first, D] each); the state after the last kept frame.
        """
        if not self.streams_exactly():
            raise ValueError("CPC with a transformer context cannot carry state across chunks")
        was_training = self.training
        self.eval()
        try:
            feats, n = self.frontend(wavs, torch.tensor([wavs.shape[1]], device=wavs.device))
            z, n_z = self.encoder(feats, n)
            last = int(n_z[0]) if last is None else last
            if not 0 <= first <= last <= int(n_z[0]):
                raise ValueError(f"frames {first}..{last} requested from a window of {int(n_z[0])} frames")
            z = z[:, first:last]
            layers, state = self.context.continue_from(z, state)
        finally:
            self.train(was_training)
        out = EncoderOutput([z, *layers, layers[-1]], torch.tensor([z.shape[1]]), self.layer_names, self.frame_shift)
        return out, state


def build_cpc(cfg: CPCConfig) -> CPC:
    """Build the frontend, encoder, context network and predictor from ``cfg``."""
    frontend = build_frontend(cfg.frontend)
    in_dim = int(frontend.out_dim)
    if cfg.encoder == "conv":
        encoder: nn.Module = ConvEncoder(in_dim, cfg.conv_layers, cfg.norm)
    else:
        encoder = FrameEncoder(in_dim, cfg.frame_dim, cfg.frame_layers, cfg.stack_frames)
    z_dim = encoder.out_dim
    if cfg.context in ("gru", "lstm"):
        context: nn.Module = RNNStack(
            z_dim, cfg.hidden_size, cfg.context_layers, cfg.context, False, cfg.dropout, cfg.packed_sequences
        )
    else:
        context = CausalTransformer(z_dim, cfg.hidden_size, cfg.context_layers, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
    transformer = None
    if cfg.predictor == "transformer":
        transformer = CausalTransformer(
            cfg.hidden_size, cfg.hidden_size, cfg.predictor_layers, cfg.num_heads, cfg.ffn_dim, cfg.dropout
        )
    predictor = Predictor(cfg.hidden_size, z_dim, cfg.prediction_steps, transformer)
    return CPC(cfg, frontend, encoder, context, predictor)


MODELS.register("cpc", ModelSpec(CPCConfig, build_cpc))
