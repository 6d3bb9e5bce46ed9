"""Gumbel-softmax product quantizer (wav2vec 2.0, Baevski et al. 2020, section 2; VQ-APC).

fairseq equivalent: ``fairseq.modules.GumbelVectorQuantizer`` (``combine_groups=False``);
Hugging Face: ``Wav2Vec2GumbelVectorQuantizer`` (same parameter shapes, so weights map 1:1).

Each frame is projected to ``G x V`` logits; each of the ``G`` groups picks one of its ``V``
codewords (straight-through hard Gumbel-softmax in training, argmax in eval) and the ``G``
chosen codewords (``vq_dim / G`` dims each) are concatenated.

Temperature is annealed ``max(temp_max * temp_decay ** step, temp_min)``; it lives in the
``temperature`` buffer so checkpoints carry it, and ``set_step(step)`` updates it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass
class QuantizerOutput:
    """Output of :class:`GumbelVectorQuantizer`.

    Attributes:
        quantized: [batch, frames, vq_dim] concatenated codewords (padding frames included,
            their values are meaningless).
        codes: [batch, frames, groups] chosen codeword index per group.
        code_perplexity: [groups] perplexity of the hard code histogram over valid frames.
        prob_perplexity: [groups] perplexity of the averaged softmax over valid frames.
        codebook_usage: scalar, fraction of the G*V codewords chosen at least once.
        diversity_loss: scalar tensor ``(G*V - sum(prob_perplexity)) / (G*V)`` (differentiable).
        temperature: the Gumbel temperature used.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    code_perplexity: torch.Tensor
    prob_perplexity: torch.Tensor
    codebook_usage: torch.Tensor
    diversity_loss: torch.Tensor
    temperature: float


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of distributions ``probs`` [..., V] (rows summing to 1) -> [...]."""
    return torch.exp(-torch.special.xlogy(probs, probs).sum(-1))


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer with ``num_groups`` codebooks of ``num_vars`` codewords.

    Args:
        input_dim: dimension of the frames to quantize.
        num_groups: G, codebooks (wav2vec 2.0 Base: 2).
        num_vars: V, codewords per codebook (Base: 320).
        vq_dim: output dimension (G codewords of ``vq_dim // G`` dims concatenated; Base: 256).
        temp_max, temp_min, temp_decay: temperature schedule ``max(temp_max * temp_decay**step, temp_min)``.
    """

    def __init__(
        self,
        input_dim: int,
        num_groups: int,
        num_vars: int,
        vq_dim: int,
        temp_max: float = 2.0,
        temp_min: float = 0.5,
        temp_decay: float = 0.999995,
    ):
        super().__init__()
        if vq_dim % num_groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by num_groups {num_groups}")
        if not 0 < temp_min <= temp_max:
            raise ValueError(f"need 0 < temp_min <= temp_max, got temp_min={temp_min}, temp_max={temp_max}")
        if not 0 < temp_decay <= 1:
            raise ValueError(f"temp_decay must be in (0, 1], got {temp_decay}")
        self.input_dim = input_dim
        self.num_groups = num_groups
        self.num_vars = num_vars
        self.vq_dim = vq_dim
        self.temp_max, self.temp_min, self.temp_decay = temp_max, temp_min, temp_decay
        self.weight_proj = nn.Linear(input_dim, num_groups * num_vars)
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_vars, vq_dim // num_groups))
        self.register_buffer("temperature", torch.tensor(float(temp_max)))
        nn.init.uniform_(self.codevectors)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)

    def temperature_at(self, step: int) -> float:
        return max(self.temp_max * self.temp_decay**step, self.temp_min)

    def set_step(self, step: int) -> None:
        """Anneal the temperature to its value after ``step`` optimiser steps."""
        self.temperature.fill_(self.temperature_at(step))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x`` [batch, frames, input_dim]; ``mask`` [batch, frames] bool, True = valid.

        Statistics (perplexities, usage, diversity loss) use valid frames only.
        """
        batch, frames, _ = x.shape
        groups, num_vars = self.num_groups, self.num_vars
        logits = self.weight_proj(x).float().view(batch * frames, groups, num_vars)
        flat_mask = None if mask is None else mask.reshape(-1)
        count = logits.new_tensor(float(batch * frames)) if flat_mask is None else flat_mask.sum().clamp(min=1)

        codes = logits.argmax(-1)  # [N, G]
        hard = torch.zeros_like(logits).scatter_(-1, codes.unsqueeze(-1), 1.0)
        if flat_mask is not None:
            hard_valid = hard * flat_mask[:, None, None]
        else:
            hard_valid = hard
        code_perplexity = perplexity(hard_valid.sum(0) / count)  # [G]
        codebook_usage = (hard_valid.sum(0) > 0).float().mean()

        soft = torch.softmax(logits, dim=-1)
        soft_valid = soft if flat_mask is None else soft * flat_mask[:, None, None]
        prob_perplexity = perplexity(soft_valid.sum(0) / count)  # [G]
        total = groups * num_vars
        diversity_loss = (total - prob_perplexity.sum()) / total

        temperature = float(self.temperature)
        if self.training:
            probs = nn.functional.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1)
            codes = probs.argmax(-1)
        else:
            probs = hard
        # [N, G, V] x [G, V, d] -> [N, G, d]: one batched matmul per group instead of a G*V*d product.
        book = self.codevectors.view(groups, num_vars, -1).to(probs.dtype)
        quantized = torch.einsum("ngv,gvd->ngd", probs, book).reshape(batch, frames, self.vq_dim)
        return QuantizerOutput(
            quantized=quantized,
            codes=codes.view(batch, frames, groups),
            code_perplexity=code_perplexity.detach(),
            prob_perplexity=prob_perplexity.detach(),
            codebook_usage=codebook_usage.detach(),
            diversity_loss=diversity_loss,
            temperature=temperature,
        )
