"""Stacks of unidirectional GRU / LSTM layers over padded batches (APC, CPC context networks).

Every layer runs on a packed sequence (``pack_padded_sequence``, the default), so padding frames
never enter the recurrence: the valid frames of an utterance are the same whether it is run alone or in a
padded batch. Padding frames of every output are zero.

GRU layers are :class:`speechssl.modules.gru.GRU` (an ``nn.GRU`` with a ~2x faster CPU training
path that runs on the padded batch: a unidirectional RNN reads every valid frame before any
padding, so its valid outputs are those of a packed run).

Layers are separate ``nn.GRU``/``nn.LSTM`` modules (not one multi-layer module) so that each
layer's output is exposed, a residual connection can join layers of equal width (APC, Chung et
al. 2019, official ``iamyuanchung/Autoregressive-Predictive-Coding`` ``model.py``), and a hook
(e.g. a VQ layer in VQ-APC) can transform the signal between two layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechssl import accel
from speechssl.modules.gru import GRU
from speechssl.modules.padding import lengths_to_mask

__all__ = ["RNNStack", "lengths_to_mask", "run_packed"]  # lengths_to_mask: re-exported for the model files


def fp32_if_needed(rnn: nn.RNNBase, x: torch.Tensor) -> tuple[contextlib.AbstractContextManager, torch.Tensor]:
    """``(context, x)`` to run ``rnn`` on ``x`` in: autocast off and ``x`` in fp32 for an LSTM under
    CPU bf16 autocast where oneDNN has no bf16 LSTM (:func:`speechssl.accel.bf16_lstm`), else as is."""
    if (isinstance(rnn, nn.LSTM) and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not accel.bf16_lstm()):
        return torch.autocast("cpu", enabled=False), x.float()
    return contextlib.nullcontext(), x


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run one ``batch_first`` RNN on the valid frames only.

    Args:
        rnn: an ``nn.GRU``/``nn.LSTM``/``nn.RNN`` built with ``batch_first=True``.
        x (Tensor): [batch, frames, in_dim].
        lengths (Tensor): [batch] valid frames (0 allowed: that row's output is all zeros).

    Returns:
        Tensor: [batch, frames, hidden], zero beyond each length.
    """
    batch, frames, _ = x.shape
    if frames == 0:
        return x.new_zeros(batch, 0, rnn.hidden_size * (2 if rnn.bidirectional else 1))
    cpu_lengths = lengths.detach().to("cpu", torch.int64).clamp(min=1, max=frames)
    packed = pack_padded_sequence(x, cpu_lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=frames)
    if bool((lengths == 0).any()):  # packing needs >= 1 frame; an empty row gives zeros
        out = out * (lengths > 0).to(out.dtype)[:, None, None]
    return out


class RNNStack(nn.Module):
    """``num_layers`` unidirectional GRU or LSTM layers with optional residual connections.

    Layer ``i`` maps ``h_{i-1}`` to ``r_i = RNN_i(h_{i-1})``; the layer output is
    ``h_i = r_i + h_{i-1}`` when ``residual`` and the widths match (every layer but the first
    when ``input_dim != hidden_size``), else ``h_i = r_i``. Dropout is applied to the input of
    every layer after the first (training only), as in the APC reference code.

    Args:
        input_dim: feature size of the input frames.
        hidden_size: units per layer.
        num_layers: number of stacked layers (>= 1).
        cell: ``"gru"`` or ``"lstm"``.
        residual: add each layer's input to its output when the widths match.
        dropout: dropout between layers.
        packed: run every layer on a packed sequence (default). A unidirectional RNN reads the
            valid frames before any padding, so ``packed=False`` gives the same valid outputs
            (padding outputs are zeroed either way); it exists because PyTorch's packed GRU
            backward is ~3x slower on CPU than the padded one (LSTM: no difference). GRU layers
            that take the fast path of :class:`speechssl.modules.gru.GRU` (fp32 on CPU) run on the
            padded batch whatever this says.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_size: int,
        num_layers: int,
        cell: Literal["gru", "lstm"] = "gru",
        residual: bool = True,
        dropout: float = 0.0,
        packed: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"RNNStack needs num_layers >= 1, got {num_layers}")
        rnn_cls = {"gru": GRU, "lstm": nn.LSTM}.get(cell)
        if rnn_cls is None:
            raise ValueError(f"RNNStack cell must be 'gru' or 'lstm', got {cell!r}")
        dims = [input_dim] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(
            rnn_cls(dims[i], hidden_size, num_layers=1, batch_first=True) for i in range(num_layers)
        )
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.input_dim = input_dim
        self.hidden_size = hidden_size
        self.packed = packed

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        between: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Run the stack.

        Args:
            x (Tensor): [batch, frames, input_dim].
            lengths (Tensor): [batch] valid frames.
            between: optional ``f(i, h_i) -> h_i'`` applied to the output of layer ``i``
                (0-based) before it feeds layer ``i + 1`` (not called after the last layer).

        Returns:
            list[Tensor]: the output of every layer, each [batch, frames, hidden_size], zero on
            padding frames. With ``between``, entry ``i`` is the output *before* the hook.
        """
        mask = lengths_to_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
        outputs = []
        h = x
        for i, rnn in enumerate(self.layers):
            inp = self.dropout(h) if i > 0 else h
            # the fast CPU GRU runs on the padded batch: same valid outputs as a packed run
            fast = isinstance(rnn, GRU) and rnn.takes_fast_path(inp)
            context, inp = fp32_if_needed(rnn, inp)
            with context:
                r = run_packed(rnn, inp, lengths) if (self.packed and not fast) or inp.shape[1] == 0 else rnn(inp)[0]
            out = r + h if self.residual and h.shape[-1] == r.shape[-1] else r
            out = out * mask
            outputs.append(out)
            h = out
            if between is not None and i + 1 < len(self.layers):
                h = between(i, out) * mask
        return outputs

    def continue_from(
        self,
        x: torch.Tensor,
        state: list | None = None,
        between: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list]:
        """Run the stack on the next frames of unpadded sequences, from the recurrent ``state`` the
        previous call returned, so that feeding a sequence chunk by chunk gives the frames of one
        pass over all of it (long-file extraction, :mod:`speechssl.extract.chunking`).

        Args:
            x (Tensor): [batch, frames, input_dim], every frame valid (no padding).
            state: the second return value of the previous call, or None at the start.
            between: as in :meth:`forward`.

        Returns:
            (list[Tensor], list): the output of every layer, each [batch, frames, hidden_size];
            the state after the last frame (per layer: ``h`` [1, batch, hidden] for GRU layers,
            ``(h, c)`` for LSTM layers).
        """
        if x.shape[1] == 0:  # nothing to read: the state carries over unchanged
            return [x.new_zeros(x.shape[0], 0, self.hidden_size) for _ in self.layers], state
        outputs, new_state = [], []
        h = x
        for i, rnn in enumerate(self.layers):
            inp = self.dropout(h) if i > 0 else h
            context, inp = fp32_if_needed(rnn, inp)
            with context:
                r, last = rnn(inp, None if state is None else state[i])
            out = r + h if self.residual and h.shape[-1] == r.shape[-1] else r
            outputs.append(out)
            new_state.append(last)
            h = out
            if between is not None and i + 1 < len(self.layers):
                h = between(i, out)
        return outputs, new_state
