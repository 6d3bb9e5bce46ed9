"""Masked autoencoder on log-Mel: MAE-AST / Audio-MAE style.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners" (CVPR); Baade et al. 2022,
"MAE-AST: Masked Autoencoding Audio Spectrogram Transformer" (Interspeech; frame and patch tokens,
mask 0.75); Huang et al. 2022, "Masked Autoencoders that Listen" (NeurIPS; Audio-MAE, mask 0.8).

Pipeline (shapes for one batch of ``B`` waveforms)::

    wavs [B, L] --frontend (80-band fbank, utterance CMVN)--> [B, T10, F]
         --tokens: frame mode: k = patch_frames frames x all F channels, one token per time step
                   patch mode: patch_frames x patch_channels patches, F / patch_channels per time step
         --> p [B, N, P]  (N = T x G tokens, G patches per time step, P values each)
    tokens = Linear(P, D)(p) (input_block: mlp: Linear -> LN -> GELU -> Linear) + sinusoid(time) + group embedding
    training: keep a random (1 - mask_ratio) of each utterance's valid tokens
         --encoder (pre-LN transformer) on the visible tokens only--> [B, K, D]     K ~ N / 4
         --Linear(D, Dd), mask token at every hidden position, decoder positions
         --light decoder (pre-LN transformer, Dd)--> Linear(Dd, P) --> prediction [B, N, P]
    loss = MSE(prediction, per-token normalised p) on the masked valid tokens
    frozen features: the encoder on every token (no masking), patch mode averaged over the G
    tokens of a time step -> [B, T, D]

``positions: rotary`` adds no sinusoid: every encoder and decoder layer rotates queries and keys by the
token's time step (RoPE), which the visible tokens keep after the masked ones are dropped.

The encoder never sees a mask token, so a step costs about ``(1 - mask_ratio)`` of a full-sequence
encoder's (attention: its square), which is the point of the design (MAE-AST: 3x faster, 2x less
memory than SSAST). Positions are absolute sinusoids attached before the masked tokens are dropped.

Frames: one model frame = ``patch_frames`` frontend frames (``frame_shift = patch_frames x`` the
frontend's shift); ``min_samples`` = one model frame; frames(L) = ``frontend.num_frames(L) // patch_frames``.

``encode`` layer names: ``latent`` (token embeddings + positions), ``layer_k``, ``context`` (the final
LayerNorm of ``layer_N``: pre-LN).

Loss metrics: ``loss`` (MSE on masked tokens), ``recon_masked`` (the same), ``recon_unmasked`` (MSE of
the decoder's output on the visible tokens, which get no gradient), ``recon_baseline`` (MSE of predicting
0: the token mean with normalised targets, 1.0 up to epsilon; the utterance mean without), ``mask_ratio`` (share of valid tokens hidden),
``visible_tokens`` (tokens per utterance the encoder saw, mean).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from speechssl.config import check_finite
from speechssl.features.base import build_frontend
from speechssl.features.cmvn import CMVNFrontend, vector_standardize
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel
from speechssl.modules.linear import FrameMLP, Linear
from speechssl.modules.padding import lengths_to_mask
from speechssl.modules.transformer import TransformerEncoder, sinusoidal_positions


@dataclasses.dataclass
class MAEConfig:
    """Masked-autoencoder config. Defaults = :func:`mae_base` (MAE-AST-like frame model)."""

    frontend: dict = dataclasses.field(
        default_factory=lambda: {"name": "fbank", "num_mel_bins": 80, "cmvn": "utterance"})
    mode: Literal["frame", "patch"] = "frame"  # frame: a token = patch_frames whole frames; patch: a tile
    patch_frames: int = 2  # frontend frames per token (time), also the model's frame rate
    patch_channels: int = 16  # patch mode: channels per tile (must divide the frontend's channels)
    mask_ratio: float = 0.75  # share of each utterance's valid tokens hidden from the encoder
    # Encoder (MAE-AST: 12 x 768 pre-LN; Audio-MAE: ViT-B).
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    # Light decoder (MAE-AST: 2 layers of 768; Audio-MAE: 16 of 512).
    decoder_dim: int = 768
    decoder_layers: int = 2
    decoder_heads: int = 12
    decoder_ffn_dim: int = 3072
    layer_norm_eps: float = 1.0e-6
    dropout: float = 0.0
    attention_dropout: float = 0.0
    init_std: float = 0.02
    # Weight of the encoder's sinusoidal time positions (MAE: 1). Below 1 the absolute position stays out
    # of the frozen features' way (mean-pooled over utterances of different lengths it is noise).
    position_scale: float = 1.0
    # Positions: "sinusoidal" (MAE: absolute time sinusoids added to the tokens, x position_scale in the encoder)
    # or "rotary" (RoPE on the queries and keys of every encoder and decoder layer, each token at its time
    # step, also after the masked ones are dropped: no position vector enters the frozen features).
    positions: Literal["sinusoidal", "rotary"] = "sinusoidal"
    # Token embedding: "linear" (MAE: one Linear(P, D)) or "mlp" (:class:`~speechssl.modules.linear.FrameMLP`,
    # Linear -> LayerNorm -> GELU -> Linear: per-token nonlinear features).
    input_block: Literal["linear", "mlp"] = "linear"
    norm_targets: bool = True  # normalise each target token to zero mean, unit variance (MAE norm_pix_loss)

    def __post_init__(self) -> None:
        check_finite(self, "model")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"model.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        for key in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"model.{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("patch_frames", "patch_channels", "num_layers", "num_heads", "decoder_layers", "decoder_heads"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.position_scale <= 0 or self.init_std <= 0:
            raise ValueError(f"model.position_scale and model.init_std must be > 0, got {self.position_scale} and "
                             f"{self.init_std}")
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"model.embed_dim {self.embed_dim} / decoder_dim {self.decoder_dim} must be divisible by "
                             f"num_heads {self.num_heads} / decoder_heads {self.decoder_heads}")


def mae_base() -> MAEConfig:
    """MAE-AST-like frame model: 2-frame tokens (20 ms), mask 0.75, 12 x 768 encoder, 2 x 768 decoder."""
    return MAEConfig()


def audio_mae_base() -> MAEConfig:
    """Audio-MAE-like patch model on 80-band fbank: 16 x 16 patches (160 ms x 16 channels), mask 0.8,
    12 x 768 encoder, 16 x 512 decoder (Audio-MAE uses 128 bands and 1024-frame clips)."""
    return MAEConfig(mode="patch", patch_frames=16, patch_channels=16, mask_ratio=0.8,
                     decoder_dim=512, decoder_layers=16, decoder_heads=16, decoder_ffn_dim=2048)


def mae_tiny() -> MAEConfig:
    """A CPU-sized frame MAE: 2-frame tokens, mask 0.75, 3 x 192 encoder, 1 x 128 decoder.

    Targets are the utterance-CMVN frames without per-token normalisation: on the synthetic demo
    corpus the per-token normalised loss stayed at the mean predictor's (MSE 0.97 of 1.0 after 150
    steps of 4 x 2 s), the CMVN frames fell to 0.82 of their baseline in 120 steps. Positions at 0.1:
    mean-pooled over utterances of different lengths full-size positions are noise to a downstream head.
    """
    return MAEConfig(embed_dim=192, num_layers=3, num_heads=4, ffn_dim=768,
                     decoder_dim=128, decoder_layers=1, decoder_heads=4, decoder_ffn_dim=512, norm_targets=False,
                     position_scale=0.1)


def _transformer(dim: int, layers: int, heads: int, ffn: int, cfg: MAEConfig) -> TransformerEncoder:
    return TransformerEncoder(dim, layers, heads, ffn, layer_norm_first=True, pos_conv_kernel=0,
                              dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, eps=cfg.layer_norm_eps)


def random_token_mask(valid: torch.Tensor, ratio: float, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hide ``floor(ratio * n)`` of each utterance's ``n`` valid tokens, uniformly at random (MAE).

    Args:
        valid: [B, N] bool, True = a real token (padding last).
    Returns:
        (visible_idx [B, K] long: the visible tokens' indices in random order, K = the most kept;
        visible_pad [B, K] bool: True where an utterance has fewer visible tokens than K;
        masked [B, N] bool: the hidden valid tokens). At least one token stays visible.
    """
    batch, tokens = valid.shape
    n_valid = valid.sum(1)
    n_keep = (n_valid - torch.floor(n_valid * ratio).long()).clamp(min=1)
    scores = torch.rand(batch, tokens, device=valid.device, generator=generator).masked_fill(~valid, 2.0)
    order = scores.argsort(dim=1)  # valid tokens in random order, then padding
    keep = int(n_keep.max())
    visible_pad = torch.arange(keep, device=valid.device)[None, :] >= n_keep[:, None]
    masked = valid & (order.argsort(dim=1) >= n_keep[:, None])
    return order[:, :keep], visible_pad, masked


class MAEModel(SSLModel):
    """Masked autoencoder (see the module docstring). Build with :func:`build_mae`."""

    name = "mae"

    def __init__(self, config: MAEConfig, frontend: CMVNFrontend, groups: int):
        super().__init__(config)
        cfg = config
        self.frontend = frontend
        self.groups = groups  # tokens per time step (1 in frame mode)
        patch_dim = frontend.out_dim * cfg.patch_frames // groups
        self.patch_embed = (Linear(patch_dim, cfg.embed_dim) if cfg.input_block == "linear"
                            else FrameMLP(patch_dim, cfg.embed_dim, cfg.layer_norm_eps))
        self.group_embed = nn.Parameter(torch.zeros(groups, cfg.embed_dim))
        self.encoder = _transformer(cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg)
        self.decoder_embed = Linear(cfg.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(cfg.decoder_dim))
        self.decoder_group_embed = nn.Parameter(torch.zeros(groups, cfg.decoder_dim))
        self.decoder = _transformer(cfg.decoder_dim, cfg.decoder_layers, cfg.decoder_heads, cfg.decoder_ffn_dim, cfg)
        self.decoder_pred = Linear(cfg.decoder_dim, patch_dim)

    # ---- contract properties -------------------------------------------------------------
    @property
    def min_samples(self) -> int:
        return int(self.frontend.frame_length + (self.config.patch_frames - 1) * self.frontend.frame_shift)

    @property
    def frame_shift(self) -> int:
        return int(self.frontend.frame_shift * self.config.patch_frames)

    @property
    def layer_names(self) -> list[str]:
        return ["latent", *(f"layer_{i + 1}" for i in range(len(self.encoder.layers))), "context"]

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid model frames (token time steps) for ``num_samples`` [batch] samples."""
        return torch.div(self.frontend.num_frames(num_samples), self.config.patch_frames, rounding_mode="floor")

    # ---- tokens ----------------------------------------------------------------------------
    def tokens(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, L] -> (patches [B, T * G, P] in time-major order, valid time steps [B])."""
        feats, feat_lengths = self.frontend(wavs, lengths)
        k, g = self.config.patch_frames, self.groups
        batch, _, channels = feats.shape
        steps = feats.shape[1] // k
        x = feats[:, : steps * k].reshape(batch, steps, k, g, channels // g)  # [B, T, k, G, C/G]
        x = x.permute(0, 1, 3, 2, 4).reshape(batch, steps * g, k * channels // g)
        return x, torch.div(feat_lengths, k, rounding_mode="floor")

    def _positions(self, steps: int, dim: int, group_embed: torch.Tensor, device: torch.device,
                   scale: float = 1.0) -> torch.Tensor:
        """[T * G, dim]: ``scale x`` the time step's sinusoid (none with rotary positions) + the channel
        group's embedding."""
        if self.config.positions == "rotary":
            return group_embed.repeat(steps, 1)
        time = scale * sinusoidal_positions(steps, dim, device)
        return (time[:, None, :] + group_embed[None]).reshape(steps * self.groups, dim)

    def _time(self, index: torch.Tensor) -> torch.Tensor | None:
        """Rotary positions (time steps) of tokens at ``index`` (any shape), or None (sinusoidal positions)."""
        return torch.div(index, self.groups, rounding_mode="floor") if self.config.positions == "rotary" else None

    def _valid_tokens(self, steps: torch.Tensor, tokens: int) -> torch.Tensor:
        return lengths_to_mask(steps * self.groups, tokens)

    def targets(self, p: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets [B, N, P]: each token normalised to zero mean and unit variance (MAE's
        ``norm_pix_loss``), or the tokens as they are (``norm_targets: false``)."""
        return vector_standardize(p) if self.config.norm_targets else p

    # ---- frozen features -----------------------------------------------------------------
    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """The encoder on every token. wavs [B, L], lengths [B] -> EncoderOutput with ``hidden_states``
        ``[latent, layer_1..layer_N, context]``, each [B, T, D] (patch mode: mean over a time step's tokens)."""
        lengths = self.check_lengths(wavs, lengths)
        p, steps = self.tokens(wavs, lengths)
        batch, tokens, _ = p.shape
        h = self.patch_embed(p) + self._positions(tokens // self.groups, self.config.embed_dim, self.group_embed,
                                                  p.device, self.config.position_scale)
        valid = self._valid_tokens(steps, tokens)
        latent, attn_mask = self.encoder.embed(h, None if bool(valid.all()) else ~valid)
        time = self._time(torch.arange(tokens, device=p.device)[None])
        context, layers = self.encoder.run_layers(latent, attn_mask, return_layers=True, positions=time)
        states = [latent, *layers, context]
        if self.groups > 1:
            states = [s.reshape(batch, tokens // self.groups, self.groups, -1).mean(2) for s in states]
        return EncoderOutput(hidden_states=states, lengths=steps, layer_names=self.layer_names,
                             frame_shift=self.frame_shift)

    # ---- pretraining loss ----------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """MSE on the masked tokens of ``batch["wavs"]`` [B, L] (``batch["lengths"]`` [B])."""
        cfg = self.config
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        p, steps = self.tokens(wavs, lengths)
        batch_size, tokens, _ = p.shape
        valid = self._valid_tokens(steps, tokens)
        visible_idx, visible_pad, masked = random_token_mask(valid, cfg.mask_ratio)
        n_valid, n_keep = valid.sum(1), (~visible_pad).sum(1)
        pos = self._positions(tokens // self.groups, cfg.embed_dim, self.group_embed, p.device, cfg.position_scale)
        h = self.patch_embed(p) + pos
        h = torch.gather(h, 1, visible_idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        enc, _ = self.encoder(h, visible_pad if bool(visible_pad.any()) else None, positions=self._time(visible_idx))

        d = self.decoder_embed(enc)
        full = self.mask_token.to(d.dtype).expand(batch_size, tokens, -1).clone()
        idx = visible_idx.masked_fill(visible_pad, tokens)  # padding rows go to a dropped extra slot
        full = torch.cat([full, full[:, :1]], 1).scatter(1, idx.unsqueeze(-1).expand(-1, -1, d.shape[-1]), d)[:, :tokens]
        full = full + self._positions(tokens // self.groups, cfg.decoder_dim, self.decoder_group_embed, p.device)
        dec, _ = self.decoder(full, None if bool(valid.all()) else ~valid,
                              positions=self._time(torch.arange(tokens, device=p.device)[None]))
        pred = self.decoder_pred(dec).float()

        target = self.targets(p)
        err = (pred - target).pow(2).mean(-1)  # [B, N]
        n_masked = masked.sum()
        loss = (err * masked).sum() / n_masked.clamp(min=1)
        with torch.no_grad():
            visible = valid & ~masked
            metrics = {
                "loss": float(loss.detach()),
                "recon_masked": float(loss.detach()),
                "recon_unmasked": float((err * visible).sum() / visible.sum().clamp(min=1)),
                "recon_baseline": float((target.pow(2).mean(-1) * masked).sum() / n_masked.clamp(min=1)),
                "mask_ratio": float(n_masked / n_valid.sum().clamp(min=1)),
                "visible_tokens": float(n_keep.float().mean()),
            }
        return LossOutput(loss=loss, metrics=metrics)


def build_mae(cfg: MAEConfig) -> MAEModel:
    """Build the frontend, check the patch geometry, assemble and initialise the model (MAE init:
    Xavier-uniform linears, N(0, init_std) mask token and group embeddings; the output layer
    N(0, init_std) too, so training starts at the mean predictor instead of spending its first steps
    shrinking Xavier-sized outputs)."""
    frontend = build_frontend(cfg.frontend)
    if not isinstance(frontend, CMVNFrontend):
        raise ValueError(f"model.frontend: MAE reconstructs spectral frames and needs a frame frontend with CMVN "
                         f"(fbank, logmel or mfcc), got {cfg.frontend.get('name')!r}")
    channels = int(frontend.out_dim)
    if cfg.mode == "patch":
        if channels % cfg.patch_channels:
            raise ValueError(f"model.patch_channels {cfg.patch_channels} does not divide the frontend's {channels} "
                             "channels")
        groups = channels // cfg.patch_channels
    else:
        groups = 1
    model = MAEModel(cfg, frontend, groups)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for param in (model.mask_token, model.group_embed, model.decoder_group_embed, model.decoder_pred.weight):
        nn.init.normal_(param, std=cfg.init_std)
    return model


MODELS.register("mae", ModelSpec(MAEConfig, build_mae))
