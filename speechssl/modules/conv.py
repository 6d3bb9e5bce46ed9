"""Strided 1-D convolution stack: the wav2vec 2.0 feature encoder (and conv subsamplers).

Baevski et al. 2020, section 2; fairseq ``ConvFeatureExtractionModel``; torchaudio
``components.FeatureExtractor``; Hugging Face ``Wav2Vec2FeatureEncoder``.

Each layer is ``conv(kernel, stride, no padding) -> norm -> GELU`` where norm is

* ``group_norm``: a per-channel GroupNorm over time in the *first* layer only (wav2vec 2.0 Base),
* ``layer_norm``: a LayerNorm over channels in *every* layer (Large / "stable layer norm"),
* ``none``: no normalisation.

Frame arithmetic (exact, no padding)::

    frames_out = 0 if frames_in < kernel else (frames_in - kernel) // stride + 1

A valid output frame only reads valid input frames, so padding can only leak through the
GroupNorm statistics; those are computed over each utterance's valid frames, which makes
batched output equal to one-at-a-time output.

Inference fast path (CPU, fp32, no autograd, ``speechssl.accel.onednn_linear()``): the stack
runs channels-last, each layer as one oneDNN matmul over its strided input windows (a view, copied
block by block of :data:`TIME_BLOCK` output frames so the operands stay in cache) with the GELU
fused. The first layer's per-channel GroupNorm is folded into that matmul: its per-utterance mean
and variance follow exactly from the mean and covariance of the input windows
(``mean_y = W mean_x``, ``var_y = diag(W Cov_x W^T)``, in float64), so the layer is a single
``gelu(windows @ W'^T + b')``. Outputs equal the reference path to float rounding (tests check
1e-4); the speed-up on wav2vec 2.0 Base's encoder is about 1.6x (``tools/bench``).

Per-tap layers (CPU, fp32, training and inference): where ``speechssl.accel.tap_conv`` says so for a
multi-channel layer's weight (weights of >= 768 x 768 elements, Base's 512 x 512 x 3 layers, on AVX2-only
CPUs and on CPUs that run AVX-512 on 256-bit units), that layer runs as one MKL matmul per kernel tap on
channels-last input (:func:`speechssl.modules.tap_conv.tap_conv1d`; forward + backward 1.5x faster than
``F.conv1d`` on an AVX2 AMD EPYC, 1.29x on an AVX-512 one of family 25), the others as before; equal to
the reference to float rounding. Of those, the
kernel-3, stride-2 layers run as Winograd F(3,2) where ``speechssl.accel.winograd_conv`` says so
(:func:`speechssl.modules.winograd_conv.winograd_conv1d`: 7 matmuls per 3 output frames instead of 9).

Without a CNN (``conv_layers: []``, MelHuBERT), :class:`FrameStack` stacks frontend frames instead;
:func:`build_feature_encoder` picks one of the two for wav2vec 2.0, HuBERT and data2vec 2.0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

import speechssl.accel as accel
from speechssl.modules import linear as onednn
from speechssl.modules.padding import lengths_to_mask
from speechssl.modules.tap_conv import tap_conv1d
from speechssl.modules.winograd_conv import winograd_conv1d

ConvNorm = Literal["group_norm", "layer_norm", "none"]


def conv_out_lengths(lengths: torch.Tensor, layers: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """Valid frames after the stack for ``lengths`` [batch] input frames (see module docstring)."""
    for _, kernel, stride in layers:
        lengths = torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, min=0)
    return lengths


def receptive_field(layers: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """``(receptive_field, total_stride)`` of the stack, in input frames (wav2vec 2.0: 400, 320)."""
    field, jump = 1, 1
    for _, kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field, jump


def masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of ``x`` [batch, channels, frames] with statistics over valid frames only."""
    batch, channels, frames = x.shape
    groups = norm.num_groups
    valid = lengths_to_mask(lengths, frames).to(x.dtype)  # [B, T]
    xg = x.reshape(batch, groups, channels // groups, frames)
    w = valid[:, None, None, :]
    count = (lengths.to(x.dtype) * (channels // groups)).clamp(min=1)[:, None, None, None]
    mean = (xg * w).sum((2, 3), keepdim=True) / count
    var = (((xg - mean) * w) ** 2).sum((2, 3), keepdim=True) / count
    y = ((xg - mean) * torch.rsqrt(var + norm.eps)).reshape(batch, channels, frames)
    if norm.affine:
        y = y * norm.weight[:, None] + norm.bias[:, None]
    return y


class ConvBlock(nn.Module):
    """``conv -> norm -> GELU``. ``norm`` is a GroupNorm, a LayerNorm over channels, or None."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm: nn.Module | None
        if norm == "group_norm":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(out_channels)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [batch, in_channels, frames] -> [batch, out_channels, frames_out]; lengths [batch] or None."""
        conv = self.conv
        if conv.in_channels == 1 and x.shape[-1] >= self.kernel:
            # One input channel (waveform): a [C, k] x [k, T] batched matmul over strided windows
            # is ~1.5x faster on CPU than the oneDNN convolution and gives the same numbers.
            weight = conv.weight.view(1, conv.out_channels, self.kernel).expand(x.shape[0], -1, -1)
            x = torch.bmm(weight, x[:, 0].unfold(-1, self.kernel, self.stride).transpose(1, 2))
            if conv.bias is not None:
                x = x + conv.bias[:, None]
        else:
            x = conv(x)
        return self.activate(x, lengths)

    def activate(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """norm -> GELU of this layer's conv output x [batch, out_channels, frames_out] (any strides);
        ``lengths`` are the layer's *input* lengths (returned as its output lengths)."""
        if lengths is not None:
            lengths = torch.clamp(torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1, min=0)
        if isinstance(self.norm, nn.GroupNorm):
            if lengths is not None and bool((lengths < x.shape[-1]).any()):
                x = masked_group_norm(x, lengths, self.norm)
            else:
                x = self.norm(x)
        elif isinstance(self.norm, nn.LayerNorm):
            x = F.layer_norm(x.transpose(1, 2), self.norm.normalized_shape, self.norm.weight, self.norm.bias,
                             self.norm.eps).transpose(1, 2)
        return F.gelu(x), lengths


TIME_BLOCK = 2048  # output frames per oneDNN call in the fast path (layer 1 of a 10 s clip: 88 ms in one call, 65 ms in blocks)


def _windows(x: torch.Tensor, kernel: int, stride: int, frames_out: int) -> torch.Tensor:
    """Strided windows of channels-last contiguous ``x`` [B, T, C]: a view [B, frames_out, kernel*C]."""
    batch, frames, channels = x.shape
    return x.as_strided((batch, frames_out, kernel * channels), (frames * channels, stride * channels, 1))


def _block_matmul(win: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None) -> torch.Tensor:
    """``act(win @ weight^T + bias)`` in blocks of :data:`TIME_BLOCK` frames (``win`` may be a strided view).

    Blocks keep a wide window copy in cache (layer 2 of Base: 1,536 values per frame); a window narrower
    than the output (the waveform layer: 10 samples -> 512 channels) is copied whole and run in one call,
    which saves copying the output block by block (the same numbers; 253 -> 183 ms for a 10 s clip's first
    layer, one thread, AMD EPYC AVX2)."""
    batch, frames, _ = win.shape
    if frames <= TIME_BLOCK or win.shape[-1] < weight.shape[0]:
        return onednn.linear(win.contiguous(), weight, bias, act)
    out = win.new_empty(batch, frames, weight.shape[0])
    for start in range(0, frames, TIME_BLOCK):
        out[:, start:start + TIME_BLOCK] = onednn.linear(win[:, start:start + TIME_BLOCK].contiguous(), weight,
                                                         bias, act)
    return out


def _fold_group_norm(win: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, valid: list[int],
                     norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-channel GroupNorm after ``y = win @ weight^T + bias`` folded into per-utterance weights.

    The statistics of y over each utterance's ``valid`` frames follow from the windows' mean and covariance
    (constants, float64): ``mean_y = W mean_x + b``, ``var_y = diag(W Cov_x W^T)``; then
    ``GN(W x + b) = (gain W) x + (b - mean_y) gain + shift``. Returns (w_fold [B, C, K], b_fold [B, C]) in
    ``win``'s dtype, differentiable in ``weight``, ``bias`` and the norm's affine parameters (not in ``win``).
    """
    with torch.no_grad():
        stats = []
        for b, n in enumerate(valid):
            xv = win[b, :n].to(torch.float64)
            centred = xv - xv.mean(0)
            stats.append((xv.mean(0), centred.T @ centred / n))
        mean_x = torch.stack([m for m, _ in stats])  # [B, K]
        cov_x = torch.stack([c for _, c in stats])  # [B, K, K]
    w64 = weight.to(torch.float64)
    b64 = bias.to(torch.float64) if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    mean_y = mean_x @ w64.T + b64  # [B, C]
    var_y = torch.einsum("ck,bkl,cl->bc", w64, cov_x, w64)
    gain = torch.rsqrt(var_y + norm.eps)  # [B, C]
    shift = torch.zeros_like(gain)
    if norm.affine:
        gain, shift = gain * norm.weight.to(torch.float64), norm.bias.to(torch.float64).expand_as(gain)
    return (gain[:, :, None] * w64).to(win.dtype), ((b64 - mean_y) * gain + shift).to(win.dtype)


def _folded_group_norm_layer(win: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             valid: list[int], norm: nn.GroupNorm) -> torch.Tensor:
    """``gelu(GroupNorm(win @ weight^T + bias))`` with per-channel statistics over each utterance's valid frames:
    the normalisation folded into a per-utterance weight and bias (:func:`_fold_group_norm`), then one fused
    matmul + GELU per utterance."""
    w_fold, b_fold = _fold_group_norm(win, weight, bias, valid, norm)
    outs = [_block_matmul(win[b:b + 1], w_fold[b], b_fold[b], "gelu") for b in range(len(valid))]
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _waveform_layer_channels_last(layer: ConvBlock, wav: torch.Tensor, lengths: torch.Tensor | None
                                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A one-channel first layer (waveform) straight to channels-last [B, frames_out, C], differentiable in its
    parameters (not in ``wav`` [B, L]): ``gelu(norm(windows @ W^T + b))``.

    A per-channel GroupNorm is folded into per-utterance weights (:func:`_fold_group_norm`, as the inference
    path does), so autograd carries the GroupNorm's gradient
    (through its statistics) to W and the affine parameters on [C, k]-sized tensors, and no [B, C, T]
    tensor is normalised, transposed or copied. A LayerNorm over channels is applied channels-last as is.
    """
    conv, kernel, stride = layer.conv, layer.kernel, layer.stride
    frames_out = (wav.shape[-1] - kernel) // stride + 1
    win = wav.unfold(-1, kernel, stride)  # [B, T, k] view
    weight = conv.weight.view(conv.out_channels, kernel)
    if lengths is not None:
        lengths = torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, min=0)
    if not isinstance(layer.norm, nn.GroupNorm):
        y = onednn.linear(win.contiguous(), weight, conv.bias)
        if isinstance(layer.norm, nn.LayerNorm):
            y = F.layer_norm(y, layer.norm.normalized_shape, layer.norm.weight, layer.norm.bias, layer.norm.eps)
        return F.gelu(y), lengths
    valid = [frames_out] * wav.shape[0] if lengths is None else [max(int(n), 1) for n in lengths]
    w_fold, b_fold = _fold_group_norm(win, weight, conv.bias, valid, layer.norm)
    # the folded bias as a (k+1)-th weight column against a column of ones: one bmm, no pass to add it
    w_fold = torch.cat([w_fold, b_fold[:, :, None]], 2)  # [B, C, k+1]
    win1 = torch.cat([win, win.new_ones(win.shape[0], frames_out, 1)], 2)
    return F.gelu(torch.bmm(win1, w_fold.transpose(1, 2))), lengths


def _tap_conv(layer: ConvBlock) -> Callable[..., torch.Tensor]:
    """The per-tap kernel of a layer that runs channels-last on MKL: Winograd F(3,2)
    (:func:`speechssl.modules.winograd_conv.winograd_conv1d`) for kernel 3, stride 2 where
    ``speechssl.accel.winograd_conv`` says so, else :func:`speechssl.modules.tap_conv.tap_conv1d`."""
    if layer.kernel == 3 and layer.stride == 2 and accel.winograd_conv(layer.conv.weight.numel()):
        return winograd_conv1d
    return tap_conv1d


class _ChannelsLast(torch.autograd.Function):
    """[B, C, T] -> contiguous [B, T, C], its gradient returned contiguous channels-first (not as a
    transposed view: the GELU and GroupNorm backward of the layer before run several times faster on
    matching layouts)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad.transpose(1, 2).contiguous()


class ConvFeatureEncoder(nn.Module):
    """Stack of :class:`ConvBlock` s.

    Args:
        in_channels: input channels (1 for waveform, n_mels for a log-Mel subsampler).
        layers: ``[(out_channels, kernel, stride), ...]``; wav2vec 2.0:
            ``[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2``.
        norm: ``group_norm`` (first layer only) | ``layer_norm`` (every layer) | ``none``.
        bias: convolution biases (False for wav2vec 2.0 Base, True for Large-LV60).
    """

    def __init__(self, in_channels: int, layers: Sequence[tuple[int, int, int]], norm: ConvNorm = "group_norm",
                 bias: bool = False):
        super().__init__()
        if not layers:
            raise ValueError("the conv feature encoder needs at least one layer")
        if norm not in ("group_norm", "layer_norm", "none"):
            raise ValueError(f"conv norm must be group_norm, layer_norm or none, got {norm!r}")
        self.spec = [tuple(int(v) for v in layer) for layer in layers]
        blocks = []
        for i, (channels, kernel, stride) in enumerate(self.spec):
            block_norm = "layer_norm" if norm == "layer_norm" else ("group_norm" if norm == "group_norm" and i == 0 else None)
            blocks.append(ConvBlock(in_channels, channels, kernel, stride, bias, block_norm))
            in_channels = channels
        self.layers = nn.ModuleList(blocks)
        self.out_dim = in_channels
        self.receptive_field, self.stride = receptive_field(self.spec)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_out_lengths(lengths, self.spec)

    def kaiming_init_(self) -> ConvFeatureEncoder:
        """Kaiming-normal convolution weights (fairseq's init of wav2vec 2.0's feature encoder), in place;
        returns ``self``. Every model with this encoder builds it so."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight)
        return self

    def _fast_path_ok(self, x: torch.Tensor, lengths: torch.Tensor | None) -> bool:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        if any(isinstance(layer.norm, nn.GroupNorm) and layer.norm.num_groups != layer.norm.num_channels
               for layer in self.layers):
            return False  # the folded GroupNorm is per channel
        shortest = x.shape[-1] if lengths is None else int(lengths.min())
        return x.shape[0] > 0 and shortest >= self.receptive_field and accel.onednn_linear()

    def _forward_fast(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The channels-last oneDNN path (see the module docstring); x: [batch, in_channels, frames]."""
        x = x.transpose(1, 2).contiguous()  # [B, T, C] (a no-op for a transposed channels-last input)
        for layer, tap in zip(self.layers, self._tap_layers(x)):
            conv = layer.conv
            frames_out = (x.shape[1] - layer.kernel) // layer.stride + 1
            win = _windows(x, layer.kernel, layer.stride, frames_out)
            # conv weight [out, in, k] -> [out, k*in], matching the window order (frame-major).
            weight = conv.weight.permute(0, 2, 1).reshape(conv.out_channels, -1)
            if lengths is not None:
                lengths = torch.clamp(torch.div(lengths - layer.kernel, layer.stride, rounding_mode="floor") + 1, min=0)
            if isinstance(layer.norm, nn.GroupNorm):
                valid = [frames_out] * x.shape[0] if lengths is None else [int(n) for n in lengths]
                x = _folded_group_norm_layer(win, weight, conv.bias, valid, layer.norm)
            elif tap and layer.norm is None:  # the GELU applied per output block by the kernel
                x = _tap_conv(layer)(x, conv.weight, conv.bias, layer.stride, activation="gelu")
            elif tap:
                y = _tap_conv(layer)(x, conv.weight, conv.bias, layer.stride)
                x = F.gelu(F.layer_norm(y, layer.norm.normalized_shape, layer.norm.weight, layer.norm.bias,
                                        layer.norm.eps))
            elif isinstance(layer.norm, nn.LayerNorm):
                y = _block_matmul(win, weight, conv.bias, None)
                x = F.gelu(F.layer_norm(y, layer.norm.normalized_shape, layer.norm.weight, layer.norm.bias,
                                        layer.norm.eps))
            else:
                x = _block_matmul(win, weight, conv.bias, "gelu")
        return x, lengths

    def _tap_layers(self, x: torch.Tensor) -> list[bool]:
        """Which layers run per kernel tap (:mod:`speechssl.modules.tap_conv`): multi-channel layers whose
        weight reaches ``speechssl.accel.tap_conv``'s size (fp32 CPU, no autocast)."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return [False] * len(self.layers)
        return [layer.conv.in_channels > 1 and accel.tap_conv(layer.conv.weight.numel()) for layer in self.layers]

    def _forward_taps(self, x: torch.Tensor, lengths: torch.Tensor | None,
                      taps: list[bool]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training path where some layers run per kernel tap: those channels-last (``x`` is kept
        as a [batch, channels, frames] view of channels-last memory), the others as :class:`ConvBlock`."""
        first = self.layers[0]
        if (len(taps) > 1 and taps[1] and first.conv.in_channels == 1 and not x.requires_grad and x.shape[0] > 0
                and x.shape[-1] >= first.kernel and (not isinstance(first.norm, nn.GroupNorm)
                                                     or first.norm.num_groups == first.norm.num_channels)):
            y, lengths = _waveform_layer_channels_last(first, x[:, 0], lengths)
            x, taps = y.transpose(1, 2), [False] + taps[1:]
            layers = list(self.layers)[1:]
        else:
            layers = list(self.layers)
        for layer, tap in zip(layers, taps[len(taps) - len(layers):]):
            if tap and x.shape[0] > 0 and x.shape[-1] >= layer.kernel:
                x = x.transpose(1, 2)
                if not x.is_contiguous():  # a channels-first input: copied, its gradient copied back
                    x = _ChannelsLast.apply(x.transpose(1, 2))
                y = _tap_conv(layer)(x, layer.conv.weight, layer.conv.bias, layer.stride)
                x, lengths = layer.activate(y.transpose(1, 2), lengths)
            else:
                x, lengths = layer(x, lengths)
        return x.transpose(1, 2), lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [batch, in_channels, frames] -> ([batch, frames_out, out_dim], lengths_out [batch] or None)."""
        if self._fast_path_ok(x, lengths):
            return self._forward_fast(x, lengths)
        taps = self._tap_layers(x)
        if any(taps):
            return self._forward_taps(x, lengths, taps)
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        return x.transpose(1, 2), lengths


class FrameStack(nn.Module):
    """No-CNN feature encoder (MelHuBERT): ``stack`` consecutive frontend frames per model frame.

    x [B, C, T] (the conv encoder's layout) -> ([B, T // stack, stack * C], lengths // stack); the
    interface of :class:`ConvFeatureEncoder` (``out_dim``, ``stride``, ``receptive_field``, ``out_lengths``).
    """

    def __init__(self, in_channels: int, stack: int):
        super().__init__()
        self.stack = int(stack)
        self.out_dim = in_channels * self.stack
        self.stride = self.receptive_field = self.stack

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, self.stack, rounding_mode="floor")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, channels, frames = x.shape
        t = frames // self.stack
        out = x[:, :, : t * self.stack].transpose(1, 2).reshape(batch, t, self.stack * channels)
        return out, None if lengths is None else self.out_lengths(lengths)


def check_feature_encoder(conv_layers: list[tuple[int, int, int]], stack_frames: int) -> None:
    """Validate a model config's ``conv_layers`` / ``stack_frames`` pair (a ValueError naming the keys)."""
    if any(len(layer) != 3 or min(layer) < 1 for layer in conv_layers):
        raise ValueError(f"model.conv_layers must be [channels, kernel, stride] triples >= 1, got {conv_layers}")
    if stack_frames < 1 or (conv_layers and stack_frames != 1):
        raise ValueError(f"model.stack_frames must be >= 1, and 1 with a conv feature encoder, got "
                         f"{stack_frames} with {len(conv_layers)} conv layers")


def build_feature_encoder(frontend: nn.Module, conv_layers: list[tuple[int, int, int]], norm: ConvNorm, bias: bool,
                          stack_frames: int) -> nn.Module:
    """The conv stack (kaiming-initialised) over ``frontend``'s output, or with ``conv_layers: []`` its
    frames stacked ``stack_frames`` at a time (:class:`FrameStack`), which needs a frame frontend."""
    if conv_layers:
        return ConvFeatureEncoder(frontend.out_dim, conv_layers, norm, bias).kaiming_init_()
    if frontend.frame_shift == 1:
        raise ValueError("model.conv_layers: [] (no CNN, MelHuBERT) needs a frame frontend (logmel, fbank, "
                         f"mfcc), got {frontend.name!r}")
    return FrameStack(frontend.out_dim, stack_frames)
