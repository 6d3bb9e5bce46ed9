"""Autoregressive Predictive Coding (APC; Chung et al. 2019) and VQ-APC (Chung et al. 2020).

Reference code: ``iamyuanchung/Autoregressive-Predictive-Coding`` (``model.py``); s3prl's
``upstream/apc``. The model::

    x  = frontend(wav)                      # [B, T, D] log-Mel (default: logmel 80, utterance CMVN)
    z  = prenet(x)  (or x if no prenet)     # [B, T, P] "latent"
    h_i = context layer i (z)               # GRU/LSTM stack with residuals, causal Transformer or CNN
    y  = postnet(h_N)                       # [B, T, D] linear, predicts x[t + n]
    loss = mean |y[t] - x[t + n]|  over valid t < length - n   (L1, padding excluded)

VQ-APC inserts a Gumbel-softmax quantizer (:class:`speechssl.modules.quantizer.GumbelVectorQuantizer`)
after chosen RNN layers: the next layer reads the quantized frames. The temperature follows
``step_update(step)``.

Frozen features (:meth:`APC.encode`): ``latent`` (z: the prenet output, or the frontend features
themselves when ``prenet_layers == 0``), ``layer_1..N`` (each context layer's output, continuous,
i.e. *before* any VQ), ``context`` (= ``layer_N``). All share the frontend's frame rate
(10 ms with the default 25 ms / 10 ms frontends).

Parameters of :func:`apc_paper` (3 x 512 GRU on 80-dim input, linear postnet): 4,105,296 — the
4.11 M that SUPERB lists for APC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from speechssl.config import ConfigError
from speechssl.features.base import build_frontend
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel
from speechssl.modules.causal import CausalConvNet, CausalTransformer
from speechssl.modules.recurrent import RNNStack, lengths_to_mask


def _default_frontend() -> dict:
    # 80 log-Mel bands, 25 ms / 10 ms, per-utterance mean/variance normalisation (padding-aware).
    return {"name": "logmel", "n_mels": 80, "cmvn": "utterance"}


@dataclasses.dataclass
class VQConfig:
    """Gumbel VQ layers of VQ-APC (Chung, Tang & Glass 2020)."""

    # 1-based context layers followed by a VQ layer; the next layer (or the postnet, after the
    # last layer) reads the quantized frames.
    after_layers: list[int] = dataclasses.field(default_factory=lambda: [3])
    num_groups: int = 1  # codebooks per VQ layer
    num_vars: int = 512  # codewords per codebook
    temp_max: float = 2.0  # Gumbel temperature schedule max(temp_max * temp_decay**step, temp_min)
    temp_min: float = 0.5
    temp_decay: float = 0.999995
    diversity_weight: float = 0.0  # weight of the codebook diversity loss (0 in VQ-APC)


@dataclasses.dataclass
class APCConfig:
    """APC hyper-parameters (defaults: the paper's 3 x 512 GRU, n = 3)."""

    frontend: dict[str, Any] = dataclasses.field(default_factory=_default_frontend)
    prenet_layers: int = 0  # MLP layers (Linear + ReLU + dropout) before the context net; 0: z = x
    prenet_dim: int = 128  # width of the prenet layers
    prenet_dropout: float = 0.0
    context: Literal["gru", "lstm", "transformer", "cnn"] = "gru"
    num_layers: int = 3  # context layers
    hidden_size: int = 512  # context width (GRU/LSTM units, Transformer dim, CNN channels)
    residual: bool = True  # RNN residual connections between layers of equal width
    dropout: float = 0.0  # between context layers (training only)
    # RNN contexts: run on packed sequences. False gives the same valid frames (padding comes after
    # them in a unidirectional RNN). fp32 CPU GRUs take speechssl's fast GRU on the padded batch
    # either way (speechssl.modules.gru: same valid frames, ~2.4x faster per layer).
    packed_sequences: bool = True
    num_heads: int = 8  # transformer context only
    ffn_dim: int = 2048  # transformer context only
    kernel_size: int = 3  # cnn context only
    dilation_growth: int = 2  # cnn context only: dilation of layer i = growth ** i
    time_shift: int = 3  # n: predict the frame n steps ahead
    vq: VQConfig | None = None  # VQ-APC (RNN contexts only)

    def __post_init__(self) -> None:
        if self.time_shift < 1:
            raise ConfigError(f"model.time_shift must be >= 1, got {self.time_shift}")
        if self.num_layers < 1 or self.hidden_size < 1:
            raise ConfigError(
                f"model.num_layers and model.hidden_size must be >= 1, got {self.num_layers}, {self.hidden_size}"
            )
        if self.prenet_layers < 0:
            raise ConfigError(f"model.prenet_layers must be >= 0, got {self.prenet_layers}")
        if self.vq is not None:
            if self.context not in ("gru", "lstm"):
                raise ConfigError(f"model.vq needs an RNN context (gru/lstm), got context={self.context!r}")
            bad = [i for i in self.vq.after_layers if not 1 <= i <= self.num_layers]
            if bad or not self.vq.after_layers or len(set(self.vq.after_layers)) != len(self.vq.after_layers):
                raise ConfigError(
                    f"model.vq.after_layers must list distinct layers in 1..{self.num_layers}, "
                    f"got {self.vq.after_layers}"
                )


def apc_paper() -> APCConfig:
    """Chung et al. 2019: 80-dim log-Mel, no prenet, 3 x 512 GRU with residuals, n = 3."""
    return APCConfig()


def vq_apc_paper() -> APCConfig:
    """VQ-APC: the paper APC with one Gumbel VQ layer (1 x 512 codes) after the last GRU layer
    (4,630,096 parameters; SUPERB lists 4.63 M)."""
    return APCConfig(vq=VQConfig())


def apc_tiny() -> APCConfig:
    """CPU-sized paper APC: 3 x 256 GRU with residuals, n = 3, 80-dim log-Mel with utterance CMVN
    (s3prl-exportable like the paper model). ``recipes/pretrain/apc_tiny.yaml`` swaps the GRUs for
    LSTMs, which PyTorch (oneDNN's LSTM) trains ~1.6x faster on CPU than even speechssl's fast GRU."""
    return APCConfig(num_layers=3, hidden_size=256)


class MLPPrenet(nn.Module):
    """``num_layers`` x (Linear -> ReLU -> Dropout): [B, T, in_dim] -> [B, T, dim]."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(in_dim if i == 0 else dim, dim), nn.ReLU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class APC(SSLModel):
    """APC / VQ-APC (see the module docstring). Built by :func:`build_apc`."""

    name = "apc"

    def __init__(
        self,
        config: APCConfig,
        frontend: nn.Module,
        prenet: nn.Module | None,
        context: nn.Module,
        postnet: nn.Linear,
        quantizers: nn.ModuleDict | None = None,
    ):
        super().__init__(config)
        self.frontend = frontend
        self.prenet = prenet
        self.context = context
        self.postnet = postnet
        self.quantizers = quantizers

    @property
    def min_samples(self) -> int:
        """Samples for ``time_shift + 1`` frames: one input frame with a target n frames ahead."""
        return int(self.frontend.frame_length + self.config.time_shift * self.frontend.frame_shift)

    @property
    def frame_shift(self) -> int:
        return int(self.frontend.frame_shift)

    @property
    def layer_names(self) -> list[str]:
        return ["latent"] + [f"layer_{i + 1}" for i in range(self.config.num_layers)] + ["context"]

    def _run(self, wavs: torch.Tensor, lengths: torch.Tensor):
        """-> (x [B,T,D], frame lengths [B], z [B,T,P], layer outputs, postnet input, VQ outputs)."""
        x, n = self.frontend(wavs, lengths)
        mask = lengths_to_mask(n, x.shape[1])
        z = x if self.prenet is None else self.prenet(x) * mask[..., None].to(x.dtype)
        vq_outputs = []
        if isinstance(self.context, RNNStack):
            between = None
            if self.quantizers is not None:
                quantizers = self.quantizers

                def between(i: int, h: torch.Tensor) -> torch.Tensor:
                    key = str(i + 1)
                    if key not in quantizers:
                        return h
                    out = quantizers[key](h, mask)
                    vq_outputs.append(out)
                    return out.quantized.to(h.dtype)

            layers = self.context(z, n, between)
            top = layers[-1]
            if between is not None:
                top = between(len(layers) - 1, top) * mask[..., None].to(top.dtype)
        else:
            layers = self.context(z, n)
            top = layers[-1]
        return x, n, z, layers, top, vq_outputs

    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """L1 between ``postnet(h_N[t])`` and ``x[t + n]`` over valid ``t < length - n``.

        batch: ``wavs`` [B, L] float32, ``lengths`` [B] samples. Metrics: ``l1`` (and for
        VQ-APC ``code_perplexity``, ``codebook_usage``, ``temperature``, ``diversity``).
        """
        x, n, _, _, top, vq_outputs = self._run(batch["wavs"], batch["lengths"])
        shift = self.config.time_shift
        frames = x.shape[1]
        if frames <= shift or int(n.max()) <= shift:
            raise ValueError(
                f"APC needs more than time_shift={shift} frames; the longest utterance has "
                f"{int(n.max()) if n.numel() else 0} (min_samples={self.min_samples})"
            )
        pred = self.postnet(top[:, : frames - shift]).float()
        target = x[:, shift:].detach().float()
        valid = lengths_to_mask((n - shift).clamp(min=0), frames - shift)[..., None]
        count = valid.sum() * x.shape[-1]
        l1 = ((pred - target).abs() * valid).sum() / count
        loss = l1
        metrics = {"l1": float(l1.detach())}
        if vq_outputs:
            weight = self.config.vq.diversity_weight
            diversity = torch.stack([o.diversity_loss for o in vq_outputs]).mean()
            if weight > 0:
                loss = loss + weight * diversity
            metrics["diversity"] = float(diversity.detach())
            metrics["code_perplexity"] = float(torch.cat([o.code_perplexity for o in vq_outputs]).mean())
            metrics["codebook_usage"] = float(torch.stack([o.codebook_usage for o in vq_outputs]).mean())
            metrics["temperature"] = float(vq_outputs[0].temperature)
        return LossOutput(loss=loss, metrics=metrics)

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Features of every layer in eval semantics (no dropout, argmax VQ codes).

        Args:
            wavs (Tensor): [batch, samples] float32 16 kHz, zero-padded.
            lengths (Tensor): [batch] valid samples.

        Returns:
            EncoderOutput with ``latent``, ``layer_1..N``, ``context``; frames beyond
            ``lengths`` are zero. Gradients flow if enabled by the caller.
        """
        was_training = self.training
        self.eval()
        try:
            _, n, z, layers, _, _ = self._run(wavs, lengths)
        finally:
            self.train(was_training)
        return EncoderOutput(
            hidden_states=[z, *layers, layers[-1]],
            lengths=n,
            layer_names=self.layer_names,
            frame_shift=self.frame_shift,
        )

    # ---- long files, chunk by chunk (speechssl.extract.chunking) -------------------------
    def streams_exactly(self) -> bool:
        """Whether :meth:`encode_continued` gives the frames of one pass (recurrent contexts:
        the state is carried; the causal Transformer/CNN contexts are not streamed)."""
        return isinstance(self.context, RNNStack)

    def encode_continued(self, wavs: torch.Tensor, first: int, last: int | None, state: Any = None):
        """Frames ``first .. last - 1`` of a window of a long file, continuing the recurrence from
        ``state`` (None at the start of the file), in eval semantics.

        Args:
            wavs (Tensor): [1, samples] the window, all valid; its frame 0 must be the first
                frame whose input the previous windows did not cover (see ``plan_chunks``).
            first, last: frames of the window to return (``last`` None: to the end).
            state: what the previous call returned.
        Returns:
            (EncoderOutput, state): ``latent``, ``layer_1..N``, ``context`` of the kept frames
            ([1, last - first, D] each); the state after the last kept frame.
        """
        if not self.streams_exactly():
            raise ValueError(f"APC with a {self.config.context} context cannot carry state across chunks")
        was_training = self.training
        self.eval()
        try:
            x, n = self.frontend(wavs, torch.tensor([wavs.shape[1]], device=wavs.device))
            z = x if self.prenet is None else self.prenet(x)
            last = int(n[0]) if last is None else last
            if not 0 <= first <= last <= int(n[0]):
                raise ValueError(f"frames {first}..{last} requested from a window of {int(n[0])} frames")
            z = z[:, first:last]
            between = None
            if self.quantizers is not None:
                quantizers, keep = self.quantizers, torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)

                def between(i: int, h: torch.Tensor) -> torch.Tensor:
                    key = str(i + 1)
                    return quantizers[key](h, keep).quantized.to(h.dtype) if key in quantizers else h

            layers, state = self.context.continue_from(z, state, between)
        finally:
            self.train(was_training)
        out = EncoderOutput([z, *layers, layers[-1]], torch.tensor([z.shape[1]]), self.layer_names, self.frame_shift)
        return out, state

    def step_update(self, step: int) -> None:
        if self.quantizers is not None:
            for q in self.quantizers.values():
                q.set_step(step)


def build_apc(cfg: APCConfig) -> APC:
    """Build the frontend, prenet, context network, postnet (and VQ layers) from ``cfg``."""
    frontend = build_frontend(cfg.frontend)
    in_dim = int(frontend.out_dim)
    prenet = None
    z_dim = in_dim
    if cfg.prenet_layers > 0:
        prenet = MLPPrenet(in_dim, cfg.prenet_dim, cfg.prenet_layers, cfg.prenet_dropout)
        z_dim = cfg.prenet_dim
    if cfg.context in ("gru", "lstm"):
        context: nn.Module = RNNStack(
            z_dim, cfg.hidden_size, cfg.num_layers, cfg.context, cfg.residual, cfg.dropout, cfg.packed_sequences
        )
    elif cfg.context == "transformer":
        context = CausalTransformer(z_dim, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
    else:
        context = CausalConvNet(
            z_dim, cfg.hidden_size, cfg.num_layers, cfg.kernel_size, cfg.dilation_growth, cfg.dropout
        )
    quantizers = None
    if cfg.vq is not None:
        from speechssl.modules.quantizer import GumbelVectorQuantizer

        quantizers = nn.ModuleDict(
            {
                str(i): GumbelVectorQuantizer(
                    cfg.hidden_size,
                    cfg.vq.num_groups,
                    cfg.vq.num_vars,
                    cfg.hidden_size,
                    cfg.vq.temp_max,
                    cfg.vq.temp_min,
                    cfg.vq.temp_decay,
                )
                for i in cfg.vq.after_layers
            }
        )
    postnet = nn.Linear(cfg.hidden_size, in_dim)
    return APC(cfg, frontend, prenet, context, postnet, quantizers)


MODELS.register("apc", ModelSpec(APCConfig, build_apc))
