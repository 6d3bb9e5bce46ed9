"""BEST-RQ: masked prediction of random-projection-quantized targets (Chiu et al. 2022, ICML).

"Self-supervised Learning with Random-projection Quantizer for Speech Recognition"; SpeechBrain
``speechbrain/lobes/models/BESTRQ.py`` and ``recipes/LibriSpeech/self-supervised-learning/BEST-RQ``.
No offline target step: the quantizer lives in the model, frozen, and is saved with it.

Pipeline (shapes for one batch of ``B`` waveforms)::

    wavs [B, L] --frontend (log-Mel / fbank, CMVN)--> [B, T10, F]          10 ms frames
         --stack stack_frames (4) non-overlapping frames--> x [B, T, 4F]   40 ms frames
    targets = RandomProjectionQuantizer(x)               [B, T, K]  (unmasked x, no grad)
    mask    = span_mask(T)                                [B, T]     (training only)
    x~      = x with masked frames replaced by N(0, mask_noise_std^2) noise
         --input_projection: Linear(4F, D), or the conv subsampler (below) -> dropout--> latent [B, T, D]
         --encoder (pos conv + transformer)--> layer_1 .. layer_N, context [B, T, D]
    loss    = CE(LinearHead(context), targets) on masked frames (+ unmasked_weight x CE on the others)

The paper uses a conformer and a conv subsampler; here the context network is the shared
transformer of :mod:`speechssl.modules.transformer` and the 4x subsampling is frame stacking,
which lines the model's frames up exactly with the quantizer's (both see the same stacked
frames) and adds no parameters (as MelHuBERT does). ``conv_subsampler: [[C, k, s], ...]`` (strides
multiplying to ``stack_frames``) replaces the Linear by the paper's kind of input: strided convolutions
over the (masked) 10 ms frames, the shared :class:`~speechssl.modules.conv.ConvFeatureEncoder`
(``conv_norm``, GELU) then :class:`~speechssl.models.wav2vec2.FeatureProjection` (LayerNorm, Linear).
The 10 ms frames are zero-padded by ``receptive_field - stride`` frames (half before, the rest after)
so that output frame ``t`` is centred on stacked frame ``t`` and there are exactly as many output
frames as quantizer targets; frames past an utterance's end are zeroed first, so a batch encodes
each utterance as it alone would be encoded.

Frames: frame ``t`` stacks frontend frames ``4t .. 4t + 3``, i.e. samples
``[640 t, 640 t + 880)``; ``frame_shift`` = ``stack_frames x`` the frontend's shift (640 = 40 ms);
``min_samples`` = one stacked frame (880 samples); frames(L) = ``frontend.num_frames(L) // stack_frames``
(a tail of fewer than ``stack_frames`` frontend frames is dropped).

``encode`` layer names: ``latent`` = the projected stacked frames (no mask, no noise), ``layer_k`` =
transformer layer k, ``context`` = final output (== ``layer_N`` post-LN, its final LayerNorm pre-LN).

Loss metrics: ``loss``, ``masked_ce``, ``unmasked_ce``, ``acc`` (masked accuracy, mean over
codebooks), ``acc_codebook_<k>``, ``code_perplexity_<k>`` and ``codebook_usage`` of the targets
(the Trainer's health watch reads these names), ``mask_ratio``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from speechssl.features.base import build_frontend
from speechssl.features.cmvn import CMVNFrontend
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel, StackedFrames
from speechssl.models.wav2vec2 import FeatureProjection
from speechssl.modules.conv import ConvFeatureEncoder, ConvNorm
from speechssl.modules.linear import Linear
from speechssl.modules.masked_prediction import LinearHead, masked_prediction_loss
from speechssl.modules.masking import span_mask
from speechssl.modules.padding import lengths_to_mask
from speechssl.modules.random_projection import RandomProjectionQuantizer
from speechssl.modules.transformer import TransformerEncoder

log = logging.getLogger(__name__)
VOICE_INPUTS = ("none", "global", "stats")


@dataclasses.dataclass
class BestRQConfig:
    """BEST-RQ config. Defaults = :func:`bestrq_base` (SpeechBrain's LibriSpeech recipe sizes, the paper's masking)."""

    # Frontend: a frame frontend with CMVN (logmel / fbank / mfcc, ``cmvn: utterance | global``).
    # The quantizer needs normalised input: without it the targets collapse onto a few codes.
    frontend: dict = dataclasses.field(
        default_factory=lambda: {"name": "logmel", "n_mels": 80, "cmvn": "utterance"})
    stack_frames: int = 4  # frontend frames per model frame (4 x 10 ms = 40 ms, as in the paper)
    # Input of the encoder: [] = Linear of the stacked frames; [[channels, kernel, stride], ...] = a conv
    # subsampler over the 10 ms frames whose strides multiply to stack_frames (paper: 2 convs, 4x).
    conv_subsampler: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    conv_norm: ConvNorm = "layer_norm"  # of the conv subsampler (speechssl.modules.conv)
    # The voice path (Linear input, frontend cmvn utterance only): utterance CMVN removes each utterance's
    # average spectrum, the voice. "none": the input is the quantizer's frames; "global": the globally
    # normalised frames too (concatenated, masked alike); "stats": the utterance's mean and log-std of the
    # globally normalised frames appended to every frame (unmasked). The quantizer keeps utterance CMVN.
    voice_input: str = "none"
    freeze_input: bool = False  # keep the input projection at its random init (fairseq feature_grad_mult 0)
    # Transformer context network (SpeechBrain: 12 conformer layers, d_model 576, 8 heads, d_ffn 2048).
    embed_dim: int = 576
    num_layers: int = 12
    num_heads: int = 8
    ffn_dim: int = 2048
    layer_norm_first: bool = True  # pre-LN, as a conformer is
    pos_conv_kernel: int = 64  # convolutional positional embedding: 64 x 40 ms = 2.56 s (wav2vec 2.0: 128 x 20 ms)
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1.0e-5
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    input_dropout: float = 0.1  # on the projected input (after masking)
    layer_drop: float = 0.0
    # Span masking on 40 ms frames. Paper: every 10 ms frame starts a 400 ms span with probability
    # 0.01, i.e. a 40 ms frame with 1 - 0.99^4 = 0.04, span 10 frames; ~33 % of frames masked.
    mask_prob: float = 0.04  # probability that a frame starts a span (speechssl.modules.masking units)
    mask_span: int = 10
    min_masks: int = 1
    mask_noise_std: float = 0.1  # masked input frames become N(0, 0.1^2) noise (paper)
    # Random-projection quantizer (paper: one codebook of 8192 codes of dimension 16).
    num_codebooks: int = 1  # > 1: the paper's multi-softmax variant (one classifier per codebook)
    codebook_size: int = 8192
    code_dim: int = 16
    quantizer_seed: int = 0  # seed of the frozen projection and codebooks (saved with the model anyway)
    # True: quantize every frontend frame (10 ms) on its own, stack_frames targets per codebook and model
    # frame (as HuBERT's 100 Hz labels on 40 ms frames); False: one target per codebook of the stacked frame.
    quantize_subframes: bool = False
    # What the quantizer sees: "input" = the model's input frames; "global" = the same frames under global
    # CMVN (trainer-estimated statistics) while the model input keeps the frontend's (utterance) CMVN, so
    # the targets carry each utterance's average spectrum, the voice (as HuBERT's k-means of raw log-Mel).
    quantizer_cmvn: str = "input"
    # Loss.
    unmasked_weight: float = 0.0  # CE weight of unmasked frames (0: masked frames only, as in the paper)
    # Warn when a codebook's target perplexity falls below this (targets collapsed onto a few codes).
    collapse_perplexity: float = 2.0

    def __post_init__(self) -> None:
        self.conv_subsampler = [tuple(int(v) for v in layer) for layer in self.conv_subsampler]
        if any(len(layer) != 3 or min(layer) < 1 for layer in self.conv_subsampler):
            raise ValueError(f"model.conv_subsampler must be [channels, kernel, stride] triples >= 1, "
                             f"got {self.conv_subsampler}")
        if self.conv_subsampler:
            total = 1
            for _, kernel, stride in self.conv_subsampler:
                if kernel < stride:
                    raise ValueError(f"model.conv_subsampler: kernel {kernel} < stride {stride} skips frames")
                total *= stride
            if total != self.stack_frames:
                raise ValueError(f"model.conv_subsampler: the strides multiply to {total}, not stack_frames "
                                 f"{self.stack_frames} (the quantizer's label rate)")
        if self.voice_input not in VOICE_INPUTS:
            raise ValueError(f"model.voice_input must be one of {list(VOICE_INPUTS)}, got {self.voice_input!r}")
        if self.quantizer_cmvn not in ("input", "global"):
            raise ValueError(f"model.quantizer_cmvn must be 'input' or 'global', got {self.quantizer_cmvn!r}")
        if self.quantizer_cmvn == "global" and self.voice_input == "stats":
            raise ValueError("model.quantizer_cmvn 'global' does not combine with voice_input 'stats'")
        if self.voice_input != "none" and self.conv_subsampler:
            raise ValueError("model.voice_input needs the Linear input (conv_subsampler: [])")
        for key in ("dropout", "attention_dropout", "activation_dropout", "input_dropout", "layer_drop", "mask_prob"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"model.{key} must be in [0, 1], got {value}")
        for key in ("stack_frames", "num_layers", "num_codebooks", "code_dim", "mask_span"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.codebook_size < 2:
            raise ValueError(f"model.codebook_size must be >= 2, got {self.codebook_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.pos_conv_groups:
            raise ValueError(f"model.embed_dim {self.embed_dim} is not divisible by pos_conv_groups {self.pos_conv_groups}")
        if self.mask_noise_std < 0 or self.unmasked_weight < 0:
            raise ValueError(f"model.mask_noise_std and model.unmasked_weight must be >= 0, got "
                             f"{self.mask_noise_std} and {self.unmasked_weight}")


def bestrq_base() -> BestRQConfig:
    """Paper-like BEST-RQ (REFERENCE.md "Masked prediction of discrete targets").

    Sizes of SpeechBrain's LibriSpeech recipe (12 layers, d 576, 8 heads, FFN 2048; lr 8e-4 in the
    recipe) but with our transformer instead of a conformer (no convolution module, so fewer
    parameters: 50.6 M). Masking follows the paper (Chiu et al. 2022: p = 0.01 per 10 ms frame,
    400 ms spans, ~33 % masked), not SpeechBrain's mask 0.15 / span 4, because the paper's numbers
    are the ones its results were obtained with. If SpeechBrain's 0.15 is in fairseq units
    (0.15 x T / 4 spans, ~14 % of frames in 160 ms spans), it is ``mask_prob=0.0375, mask_span=4``
    here. Quantizer: one codebook of 8192 codes of dimension 16.
    """
    return BestRQConfig()


def bestrq_tiny() -> BestRQConfig:
    """A 1.5 M-parameter BEST-RQ that learns on 2 CPU cores in minutes.

    80-dim log-Mel (utterance CMVN) stacked to 40 ms, 3 x 192 post-LN transformer, one codebook of
    256 codes (a small corpus cannot fill 8192 codes: most would never be a target). Shorter spans
    than the paper (160 ms, ~28 % of frames masked): on 6 minutes of synthetic speech the paper's
    400 ms spans left the masked accuracy at the targets' unigram prior (0.11 after 150 steps), 160 ms
    spans reached 0.17 after 300 steps.
    """
    return BestRQConfig(
        embed_dim=192, num_layers=3, num_heads=4, ffn_dim=768, layer_norm_first=False,
        pos_conv_kernel=16, pos_conv_groups=8, dropout=0.05, attention_dropout=0.0, input_dropout=0.05,
        mask_prob=0.08, mask_span=4, codebook_size=256,
    )


class ConvSubsampler(nn.Module):
    """Stacked frames x [B, T, k F] (k = total stride) -> [B, T, D] by convolutions over the 10 ms frames.

    The shared conv feature encoder and feature projection of wav2vec 2.0 / data2vec 2.0, with the
    zero padding of the module docstring: output frame t sees 10 ms frames ``k t - left ..`` and there
    are exactly T outputs.
    """

    def __init__(self, in_dim: int, layers: list[tuple[int, int, int]], norm: ConvNorm, embed_dim: int,
                 eps: float = 1e-5):
        super().__init__()
        self.in_dim = in_dim
        self.conv = ConvFeatureEncoder(in_dim, layers, norm, bias=False).kaiming_init_()
        pad = self.conv.receptive_field - self.conv.stride
        self.pad = (pad // 2, pad - pad // 2)
        self.projection = FeatureProjection(self.conv.out_dim, embed_dim, 0.0, eps)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, k F], valid [B, T] bool or None (all valid) -> [B, T, D]."""
        batch, frames, _ = x.shape
        if valid is not None and not bool(valid.all()):
            x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        feats = x.reshape(batch, frames * self.conv.stride, self.in_dim).transpose(1, 2)  # the 10 ms frames
        out, _ = self.conv(torch.nn.functional.pad(feats, self.pad))
        return self.projection(out)


class BestRQModel(StackedFrames, SSLModel):
    """BEST-RQ (see the module docstring). Build with :func:`build_bestrq`."""

    name = "bestrq"

    def __init__(self, config: BestRQConfig, frontend: CMVNFrontend, quantizer: RandomProjectionQuantizer,
                 input_projection: nn.Module, encoder: TransformerEncoder, head: LinearHead,
                 voice_frontend: CMVNFrontend | None = None):
        super().__init__(config)
        self.frontend = frontend
        self.voice_frontend = voice_frontend  # cmvn global statistics of the voice path (voice_input != none)
        self.quantizer = quantizer
        self.input_projection = input_projection
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.encoder = encoder
        self.head = head
        self._calls_since_warning = 10**9

    # ---- contract properties -------------------------------------------------------------
    # ---- shared feature path -------------------------------------------------------------
    def stacked_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, L], lengths [B] -> (normalised stacked frames x [B, T, stack * F], valid frames [B])."""
        x, frame_lengths, _, _ = self.input_features(wavs, lengths, quantizer=False)
        return x, frame_lengths

    def input_features(self, wavs: torch.Tensor, lengths: torch.Tensor, quantizer: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`stacked_features`, the voice path's input (globally normalised stacked frames
        [B, T, stack * F] (voice_input global), the utterance's [mean, log-std] of them [B, T, 2 F] (stats),
        padding frames 0, or None) and the quantizer's input [B, T, stack * F] (quantizer_cmvn; None with
        ``quantizer=False``: features need no targets, and the global-CMVN pass only the quantizer reads
        is skipped)."""
        k = self.config.stack_frames
        if self.voice_frontend is None:
            feats, feat_lengths = self.frontend(wavs, lengths)
            voice = None
        else:
            raw, feat_lengths = self.frontend.raw_features(wavs, lengths)
            feats = self.frontend.normalise(raw, feat_lengths)
            needed = quantizer or self.config.voice_input != "none"
            voice = self.voice_frontend.normalise(raw, feat_lengths) if needed else None
        frames = feats.shape[1] // k
        frame_lengths = torch.div(feat_lengths, k, rounding_mode="floor")
        x = feats[:, : frames * k].reshape(feats.shape[0], frames, k * feats.shape[2])
        quantizer_input = x if quantizer else None
        if quantizer and self.config.quantizer_cmvn == "global":
            quantizer_input = voice[:, : frames * k].reshape(x.shape)
        if voice is not None and self.config.voice_input == "stats":
            count = feat_lengths.clamp(min=1).to(voice.dtype)[:, None]
            mean = voice.sum(1) / count  # padding frames are 0
            centred = (voice - mean[:, None]).masked_fill(~lengths_to_mask(feat_lengths, voice.shape[1])[..., None], 0.0)
            log_std = 0.5 * torch.log((centred.pow(2).sum(1) / count).clamp(min=1e-10))
            stats = torch.cat([mean, log_std], -1)[:, None].expand(-1, frames, -1)
            voice = stats.masked_fill(~lengths_to_mask(frame_lengths, frames)[..., None], 0.0)
        elif self.config.voice_input == "global":
            voice = voice[:, : frames * k].reshape(x.shape)
        else:
            voice = None
        return x, frame_lengths, voice, quantizer_input

    def model_input(self, x: torch.Tensor, voice: torch.Tensor | None, mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """The input projection's input: x (masked frames -> N(0, mask_noise_std^2) noise when ``mask``
        [B, T] is given), with the voice path concatenated (its frames masked alike; stats unmasked)."""
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), torch.randn_like(x) * self.config.mask_noise_std, x)
            if voice is not None and self.config.voice_input == "global":
                voice = torch.where(mask.unsqueeze(-1), torch.randn_like(voice) * self.config.mask_noise_std, voice)
        return x if voice is None else torch.cat([x, voice], -1)

    def project(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Stacked frames x [B, T, kF] (valid [B, T]) -> latent [B, T, D] (input projection, input dropout)."""
        conv = isinstance(self.input_projection, ConvSubsampler)
        return self.input_dropout(self.input_projection(x, valid) if conv else self.input_projection(x))

    @staticmethod
    def _padding_mask(valid: torch.Tensor) -> torch.Tensor | None:
        """[B, T] bool True = padding, or None when nothing is padded (fast path)."""
        return None if bool(valid.all()) else ~valid

    # ---- frozen features -----------------------------------------------------------------
    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Features without masking. wavs [B, L] 16 kHz, lengths [B] -> EncoderOutput with
        ``hidden_states`` ``[latent, layer_1..layer_N, context]``, each [B, T, D]."""
        lengths = self.check_lengths(wavs, lengths)
        x, frame_lengths, voice, _ = self.input_features(wavs, lengths, quantizer=False)
        valid = lengths_to_mask(frame_lengths, x.shape[1])
        latent = self.project(self.model_input(x, voice), valid)
        context, layers = self.encoder(latent, self._padding_mask(valid), return_layers=True)
        return EncoderOutput(hidden_states=[latent, *layers, context], lengths=frame_lengths,
                             layer_names=self.layer_names, frame_shift=self.frame_shift)

    # ---- pretraining loss ----------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """Masked cross-entropy on ``batch["wavs"]`` [B, L], ``batch["lengths"]`` [B]."""
        cfg = self.config
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        x, frame_lengths, voice, quantizer_input = self.input_features(wavs, lengths)
        valid = lengths_to_mask(frame_lengths, x.shape[1])
        targets = self.targets(quantizer_input)  # from the unmasked input
        mask = span_mask(frame_lengths, x.shape[1], cfg.mask_prob, cfg.mask_span, cfg.min_masks)
        latent = self.project(self.model_input(x, voice, mask), valid)
        context, _ = self.encoder(latent, self._padding_mask(valid))
        out = masked_prediction_loss(self.head, context, targets, mask, valid, cfg.unmasked_weight)

        metrics = {
            "loss": float(out.loss.detach()),
            "masked_ce": float(out.masked_loss.detach()),
            "unmasked_ce": float(out.unmasked_loss.detach()),
            "acc": sum(out.accuracy) / len(out.accuracy),
            "mask_ratio": float(mask.sum() / valid.sum().clamp(min=1)),
            "codebook_usage": sum(out.codebook_usage) / len(out.codebook_usage),
        }
        for k in range(len(out.accuracy)):
            metrics[f"acc_codebook_{k}"] = out.accuracy[k]
            metrics[f"code_perplexity_{k}"] = out.code_perplexity[k]
        self._warn_on_collapse(out.code_perplexity, int(valid.sum()))
        return LossOutput(loss=out.loss, metrics=metrics)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked frames x [B, T, kF] -> codes [B, T, num_codebooks] (or [B, T, k num_codebooks] with
        quantize_subframes: column ``j num_codebooks + c`` = codebook c of frontend frame ``k t + j``)."""
        if not self.config.quantize_subframes:
            return self.quantizer(x)
        batch, frames, _ = x.shape
        codes = self.quantizer(x.reshape(batch, frames * self.config.stack_frames, -1))
        return codes.reshape(batch, frames, -1)

    def _warn_on_collapse(self, code_perplexity: list[float], num_frames: int) -> None:
        self._calls_since_warning += 1
        threshold = self.config.collapse_perplexity
        if num_frames >= 4 * threshold and min(code_perplexity) < threshold and self._calls_since_warning >= 100:
            log.warning("bestrq: the random-projection targets use about %s code(s) per codebook (perplexity "
                        "threshold %.1f): the input is probably not normalised; check model.frontend.cmvn",
                        [round(v, 2) for v in code_perplexity], threshold)
            self._calls_since_warning = 0


def build_bestrq(cfg: BestRQConfig) -> BestRQModel:
    """Build every submodule from ``cfg`` and assemble the model."""
    frontend = build_frontend(cfg.frontend)
    if not isinstance(frontend, CMVNFrontend):
        raise ValueError(f"model.frontend: BEST-RQ needs a frame frontend with CMVN (logmel, fbank or mfcc), "
                         f"got {cfg.frontend.get('name')!r}")
    if frontend.config.cmvn == "none":
        raise ValueError("model.frontend.cmvn: BEST-RQ needs normalised input ('utterance' or 'global'), got "
                         "'none'; unnormalised log-Mel makes the random-projection targets collapse onto a few codes")
    in_dim = cfg.stack_frames * frontend.out_dim
    voice_frontend = None
    if cfg.voice_input != "none" or cfg.quantizer_cmvn == "global":
        if frontend.config.cmvn != "utterance":
            wants = (f"model.voice_input {cfg.voice_input!r}" if cfg.voice_input != "none"
                     else f"model.quantizer_cmvn {cfg.quantizer_cmvn!r}")
            raise ValueError(f"{wants} needs model.frontend.cmvn 'utterance', got "
                             f"{frontend.config.cmvn!r} (global CMVN keeps the voice in the input already)")
        voice_frontend = build_frontend({**cfg.frontend, "cmvn": "global"})  # the trainer fills its statistics
    quantizer = RandomProjectionQuantizer(frontend.out_dim if cfg.quantize_subframes else in_dim, cfg.num_codebooks,
                                          cfg.codebook_size, cfg.code_dim, cfg.quantizer_seed)
    input_projection: nn.Module
    if cfg.conv_subsampler:
        input_projection = ConvSubsampler(frontend.out_dim, cfg.conv_subsampler, cfg.conv_norm, cfg.embed_dim,
                                          cfg.layer_norm_eps)
    else:
        voice_dim = {"none": 0, "global": in_dim, "stats": 2 * frontend.out_dim}[cfg.voice_input]
        input_projection = Linear(in_dim + voice_dim, cfg.embed_dim)
    if cfg.freeze_input:
        input_projection.requires_grad_(False)
    encoder = TransformerEncoder(
        cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.layer_norm_first, cfg.pos_conv_kernel,
        cfg.pos_conv_groups, cfg.dropout, cfg.attention_dropout, cfg.activation_dropout, cfg.layer_drop,
        cfg.layer_norm_eps,
    )
    for module in encoder.modules():
        if isinstance(module, nn.Linear):  # BERT-style init, as for wav2vec 2.0 (fairseq init_bert_params)
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
    num_targets = cfg.num_codebooks * (cfg.stack_frames if cfg.quantize_subframes else 1)
    head = LinearHead(cfg.embed_dim, [cfg.codebook_size] * num_targets)
    return BestRQModel(cfg, frontend, quantizer, input_projection, encoder, head, voice_frontend)


MODELS.register("bestrq", ModelSpec(BestRQConfig, build_bestrq))
