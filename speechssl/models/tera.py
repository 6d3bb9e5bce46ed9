"""TERA and Mockingjay: reconstruct altered log-Mel frames with a transformer encoder.

Liu et al. 2020, "Mockingjay: Unsupervised Speech Representation Learning with Deep Bidirectional
Transformer Encoders" (ICASSP); Liu et al. 2021, "TERA: Self-Supervised Learning of Transformer
Encoder Representation for Speech" (IEEE/ACM TASLP). s3prl ``pretrain/mockingjay``,
``pretrain/tera`` and ``upstream/mockingjay`` (the model every TERA / Mockingjay upstream loads).

Pipeline (shapes for one batch of ``B`` waveforms)::

    wavs [B, L] --frontend (80-band Kaldi fbank or log-Mel, utterance CMVN)--> [B, T10, F]   10 ms
         --stack stack_frames non-overlapping frames (1: none, as s3prl)--> x [B, T, kF]
    target  = x (or the log linear spectrogram, 201 bins per 10 ms, CMVN, stacked: Mockingjay)
    x~, altered = alter(x): time (15 % in spans of 7: zero / random frame / kept, 80/10/10),
                  frequency (a band of up to 20 % of the channels zeroed), magnitude (noise)
         --input_projection Linear(kF, D) (input_block: mlp: Linear -> LN -> GELU -> Linear)
           + sinusoidal positions (positions: rotary: none added)--> LN (post-LN only), dropout --> latent
         --post-LN transformer (rotary: RoPE in every attention)--> layer_1 .. layer_N (= context)
    loss    = L1(SpecHead(context), target) on the altered elements

The input block (``Linear + sinusoid -> LayerNorm -> dropout``) and the post-LN BERT layers are
s3prl's ``TransformerModel``, so a trained encoder exports to s3prl's ``tera_local`` /
``mockingjay_local`` (:mod:`speechssl.integrations.s3prl_tera`), whose hidden states are our
``latent, layer_1 .. layer_N``. Mockingjay is the time-only configuration (:func:`mockingjay_base`),
optionally with the linear-spectrogram target.

Frames: frame ``t`` stacks frontend frames ``kt .. kt + k - 1``; ``frame_shift`` = ``k x`` the
frontend's shift; ``min_samples`` = one stacked frame; frames(L) = ``frontend.num_frames(L) // k``.

``encode`` layer names: ``latent`` (the input block's output, s3prl's hidden state 0), ``layer_k``,
``context`` (== ``layer_N`` post-LN, its final LayerNorm pre-LN).

Loss metrics: ``loss`` (L1 on the altered elements), ``recon_masked`` (the same), ``recon_unmasked``
(L1 on the valid elements left unaltered: how well the model copies what it sees), ``recon_baseline``
(L1 of predicting 0, the utterance mean after CMVN or the frame mean with ``norm_targets``, on the
altered elements), ``alter_ratio`` (share of valid elements altered) and, with the time alteration on,
``mask_ratio`` (share of valid frames chosen by it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from speechssl.config import check_finite
from speechssl.features.base import build_frontend, frame_signal
from speechssl.features.cmvn import CMVNFrontend, utterance_cmvn, vector_standardize
from speechssl.features.logmel import analysis_window
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel, StackedFrames
from speechssl.modules.alterations import alter
from speechssl.modules.linear import FrameMLP, Linear
from speechssl.modules.padding import lengths_to_mask
from speechssl.modules.transformer import TransformerEncoder, sinusoidal_positions


@dataclasses.dataclass
class TERAConfig:
    """TERA / Mockingjay config. Defaults = :func:`tera_base` (s3prl ``pretrain/tera`` logMelBase-T-F-M)."""

    # Frontend: 80-band log-Mel with CMVN (``cmvn: none`` runs, but then zeroed frames and channels are not
    # "the utterance mean"; s3prl always normalises). Kaldi fbank (per-utterance CMVN) exports to s3prl's on-the-fly
    # "kaldi" extracter; s3prl's own checkpoints use a centred torchaudio log-Mel instead.
    frontend: dict = dataclasses.field(
        default_factory=lambda: {"name": "fbank", "num_mel_bins": 80, "cmvn": "utterance"})
    stack_frames: int = 1  # frontend frames per model frame (s3prl: 1, i.e. 10 ms frames)
    # Reconstruction target: "input" (the unaltered frames, TERA) or "linear" (log linear spectrogram,
    # frame_length // 2 + 1 = 201 bins per 10 ms frame, utterance CMVN: Mockingjay's option).
    target: Literal["input", "linear"] = "input"
    # Normalise each target frame (its k stacked frames' values) to zero mean and unit variance: MAE's
    # norm_pix_loss (He et al. 2022) on TERA's target; not in s3prl (which reconstructs the CMVN frames).
    norm_targets: bool = False
    # Transformer (s3prl TERA base: 3 layers, 768, 12 heads, FFN 3072, post-LN, LN eps 1e-12).
    embed_dim: int = 768
    num_layers: int = 3
    num_heads: int = 12
    ffn_dim: int = 3072
    layer_norm_first: bool = False  # s3prl: post-LN (pre-LN trains here but does not export)
    layer_norm_eps: float = 1.0e-12
    dropout: float = 0.1  # s3prl hidden_dropout_prob (the released 960 h TERA: 0.1, "drop1")
    attention_dropout: float = 0.1
    init_std: float = 0.02  # BERT init of every linear layer (s3prl initializer_range)
    # Weight of the sinusoidal positions added to the projected frames (s3prl: 1). Below 1 the absolute
    # position stays out of the features' way: mean-pooled over utterances of different lengths it is
    # length-dependent noise to a downstream head with few labels. Exports exactly (folded into the
    # input projection: LN(Wx + b + s p) = LN((Wx + b) / s + p)).
    position_scale: float = 1.0
    # Positions: "sinusoidal" (s3prl: absolute sinusoids x position_scale added to the projected frames) or
    # "rotary" (RoPE on every layer's queries and keys: attention sees relative positions and no position
    # vector enters the features, so mean-pooled features do not vary with utterance length; does not export).
    positions: Literal["sinusoidal", "rotary"] = "sinusoidal"
    # Input block: "linear" (s3prl: one Linear(kF, D)) or "mlp" (:class:`~speechssl.modules.linear.FrameMLP`,
    # Linear -> LayerNorm -> GELU -> Linear: per-frame nonlinear features; does not export to s3prl).
    input_block: Literal["linear", "mlp"] = "linear"
    # Time alteration: ~15 % of frames in spans of 7; zero 80 %, random frame 10 %, kept 10 % (per utterance).
    time_alteration: bool = True
    time_ratio: float = 0.15
    time_span: int = 7
    time_random_prob: float = 0.1
    time_keep_prob: float = 0.1
    # Frequency alteration: a band of up to 20 % of the channels zeroed.
    frequency_alteration: bool = True
    frequency_max_ratio: float = 0.2
    # Magnitude alteration: Gaussian noise (std 0.2, as s3prl) on 15 % of the frames.
    magnitude_alteration: bool = True
    magnitude_ratio: float = 0.15
    magnitude_std: float = 0.2

    def __post_init__(self) -> None:
        check_finite(self, "model")
        for key in ("dropout", "attention_dropout", "time_ratio", "time_random_prob", "time_keep_prob",
                    "frequency_max_ratio", "magnitude_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"model.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.time_random_prob + self.time_keep_prob > 1.0:
            raise ValueError(f"model.time_random_prob + model.time_keep_prob must be <= 1, got "
                             f"{self.time_random_prob} + {self.time_keep_prob}")
        for key in ("stack_frames", "num_layers", "num_heads", "time_span"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.magnitude_std < 0 or self.init_std <= 0 or self.position_scale <= 0:
            raise ValueError(f"model.magnitude_std must be >= 0, model.init_std and model.position_scale > 0, got "
                             f"{self.magnitude_std}, {self.init_std} and {self.position_scale}")
        if not (self.time_alteration or self.frequency_alteration or self.magnitude_alteration):
            raise ValueError("model: every alteration is off (time_alteration, frequency_alteration, "
                             "magnitude_alteration): there would be nothing to reconstruct")
        if self.target == "linear" and self.frequency_alteration:
            raise ValueError("model.target 'linear' with model.frequency_alteration: the zeroed band of the input "
                             "has no counterpart in the linear-spectrogram target (Mockingjay is time-only)")


def tera_base() -> TERAConfig:
    """s3prl ``pretrain/tera`` logMelBase-T-F-M: 3 x 768 post-LN, time + frequency + magnitude alterations,
    L1 on 80-dim log-Mel (AdamW lr 2e-4, 1M steps: recipes/pretrain/tera.yaml). 21.3 M parameters."""
    return TERAConfig()


def mockingjay_base() -> TERAConfig:
    """s3prl ``pretrain/mockingjay`` (config_model_large): 12 x 768 post-LN, time alteration only,
    L1 to the 201-bin log linear spectrogram (lr 2e-4, 500k steps in the paper: recipes/pretrain/mockingjay.yaml)."""
    return TERAConfig(num_layers=12, target="linear", frequency_alteration=False, magnitude_alteration=False)


def tera_tiny() -> TERAConfig:
    """A CPU-sized TERA: 3 x 192 pre-LN on 80-dim fbank stacked to 20 ms; all three alterations;
    positions at 0.1 (at s3prl's 1 they swamp the projected frames of a fresh model, whose frozen
    features then carry utterance length more than content). Pre-LN: s3prl's per-frame LayerNorm of the
    input block cost 3 points of speaker accuracy in the demo (n=2: 0.135 post-LN, 0.168 pre-LN).
    Stacked and pre-LN, it does not export to s3prl (:func:`tera_base` does)."""
    return TERAConfig(embed_dim=192, num_heads=4, ffn_dim=768, stack_frames=2, time_span=4, dropout=0.05,
                      attention_dropout=0.0, position_scale=0.1, layer_norm_first=True)


class SpecHead(nn.Module):
    """s3prl ``TransformerSpecPredictionHead``: ``output(LN(GELU(dense(x))))``; x [B, T, D] -> [B, T, out]."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.dense = Linear(dim, dim, activation="gelu")
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.output = Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(self.dense(x)))


def log_linear_spectrogram(wavs: torch.Tensor, frame_length: int, frame_shift: int, frames: int) -> torch.Tensor:
    """Log power spectrum of Hann-windowed frames (no centring): [B, L] -> [B, frames, frame_length // 2 + 1].

    The frames are the frontend's (samples ``[t * shift, t * shift + frame_length)``); log floor 1e-6.
    """
    window = analysis_window("hann", frame_length).to(wavs.device)
    x = frame_signal(wavs, frame_length, frame_shift)[:, :frames] * window
    return torch.fft.rfft(x).abs().square().clamp(min=1e-6).log()


class TERAModel(StackedFrames, SSLModel):
    """TERA / Mockingjay (see the module docstring). Build with :func:`build_tera`."""

    name = "tera"

    def __init__(self, config: TERAConfig, frontend: CMVNFrontend, input_projection: nn.Module,
                 encoder: TransformerEncoder, head: SpecHead):
        super().__init__(config)
        self.frontend = frontend
        self.input_projection = input_projection
        self.encoder = encoder
        self.head = head

    # ---- contract properties -------------------------------------------------------------
    # ---- shared feature path -------------------------------------------------------------
    def _stack(self, feats: torch.Tensor) -> torch.Tensor:
        k = self.config.stack_frames
        frames = feats.shape[1] // k
        return feats[:, : frames * k].reshape(feats.shape[0], frames, k * feats.shape[2])

    def stacked_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, L], lengths [B] -> (normalised stacked frames [B, T, k * F], valid frames [B])."""
        feats, feat_lengths = self.frontend(wavs, lengths)
        return self._stack(feats), torch.div(feat_lengths, self.config.stack_frames, rounding_mode="floor")

    def targets(self, wavs: torch.Tensor, x: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """The reconstruction target [B, T, target_dim]: ``x`` itself or the CMVN log linear spectrogram,
        each frame normalised to zero mean and unit variance with ``norm_targets``."""
        if self.config.target == "input":
            target = x
        else:
            k = self.config.stack_frames
            frames = x.shape[1] * k
            spec = log_linear_spectrogram(wavs, self.frontend.frame_length, self.frontend.frame_shift, frames)
            target = self._stack(utterance_cmvn(spec, frame_lengths * k))
        return vector_standardize(target) if self.config.norm_targets else target

    def _layers(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x [B, T, kF] -> (latent, context, [layer_1..layer_N]), each [B, T, D]."""
        h = self.input_projection(x)
        time = None
        if self.config.positions == "rotary":
            time = torch.arange(x.shape[1], device=x.device)[None]
        else:
            h = h + self.config.position_scale * sinusoidal_positions(x.shape[1], self.config.embed_dim, x.device)
        padding = None if bool(valid.all()) else ~valid
        latent, attn_mask = self.encoder.embed(h, padding)
        context, layers = self.encoder.run_layers(latent, attn_mask, return_layers=True, positions=time)
        return latent, context, layers

    # ---- frozen features -----------------------------------------------------------------
    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Features without alteration. wavs [B, L] 16 kHz, lengths [B] -> EncoderOutput with
        ``hidden_states`` ``[latent, layer_1..layer_N, context]``, each [B, T, D]."""
        lengths = self.check_lengths(wavs, lengths)
        x, frame_lengths = self.stacked_features(wavs, lengths)
        latent, context, layers = self._layers(x, lengths_to_mask(frame_lengths, x.shape[1]))
        return EncoderOutput(hidden_states=[latent, *layers, context], lengths=frame_lengths,
                             layer_names=self.layer_names, frame_shift=self.frame_shift)

    # ---- pretraining loss ----------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """L1 reconstruction of the altered elements of ``batch["wavs"]`` [B, L] (``batch["lengths"]`` [B])."""
        cfg = self.config
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        x, frame_lengths = self.stacked_features(wavs, lengths)
        valid = lengths_to_mask(frame_lengths, x.shape[1])
        target = self.targets(wavs, x, frame_lengths)
        alt = alter(x, frame_lengths, channels=self.frontend.out_dim, time=cfg.time_alteration,
                    time_ratio=cfg.time_ratio, time_span=cfg.time_span, random_prob=cfg.time_random_prob,
                    keep_prob=cfg.time_keep_prob, frequency=cfg.frequency_alteration,
                    frequency_max_ratio=cfg.frequency_max_ratio, magnitude=cfg.magnitude_alteration,
                    magnitude_ratio=cfg.magnitude_ratio, magnitude_std=cfg.magnitude_std)
        _, context, _ = self._layers(alt.x, valid)
        pred = self.head(context)
        altered = alt.altered
        if target.shape[-1] != altered.shape[-1]:  # linear target (time / magnitude only): whole frames
            altered = altered.any(-1, keepdim=True).expand_as(target)
        err = (pred.float() - target).abs()
        n_altered = altered.sum()
        loss = (err * altered).sum() / n_altered.clamp(min=1)
        with torch.no_grad():
            unaltered = valid.unsqueeze(-1) & ~altered
            metrics = {
                "loss": float(loss.detach()),
                "recon_masked": float(loss.detach()),
                "recon_unmasked": float((err * unaltered).sum() / unaltered.sum().clamp(min=1)),
                "recon_baseline": float((target.abs() * altered).sum() / n_altered.clamp(min=1)),
                "alter_ratio": float(n_altered / (valid.sum() * target.shape[-1]).clamp(min=1)),
            }
            if cfg.time_alteration:
                metrics["mask_ratio"] = float(alt.time.sum() / valid.sum().clamp(min=1))
        return LossOutput(loss=loss, metrics=metrics)


def build_tera(cfg: TERAConfig) -> TERAModel:
    """Build every submodule from ``cfg`` and assemble the model."""
    frontend = build_frontend(cfg.frontend)
    if not isinstance(frontend, CMVNFrontend):
        raise ValueError(f"model.frontend: TERA reconstructs spectral frames and needs a frame frontend with CMVN "
                         f"(fbank, logmel or mfcc), got {cfg.frontend.get('name')!r}")
    in_dim = cfg.stack_frames * frontend.out_dim
    target_dim = in_dim if cfg.target == "input" else cfg.stack_frames * (frontend.frame_length // 2 + 1)
    input_projection = (Linear(in_dim, cfg.embed_dim) if cfg.input_block == "linear"
                        else FrameMLP(in_dim, cfg.embed_dim, cfg.layer_norm_eps))
    encoder = TransformerEncoder(cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.layer_norm_first,
                                 pos_conv_kernel=0, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                                 eps=cfg.layer_norm_eps)
    head = SpecHead(cfg.embed_dim, target_dim, cfg.layer_norm_eps)
    for module in (*input_projection.modules(), *encoder.modules(), *head.modules()):
        if isinstance(module, nn.Linear):  # s3prl init_Transformer_weights (BERT)
            nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
            nn.init.zeros_(module.bias)
    return TERAModel(cfg, frontend, input_projection, encoder, head)


MODELS.register("tera", ModelSpec(TERAConfig, build_tera))
