"""Masked prediction of discrete targets: classifier heads and the masked cross-entropy.

The classifier side shared by BEST-RQ (Chiu et al. 2022; targets from
:class:`~speechssl.modules.random_projection.RandomProjectionQuantizer`) and HuBERT (Hsu et al.
2021; targets from k-means, ``speechssl.targets``). A head maps context frames [N, D] to one
logit matrix per target set ("codebook"): :class:`LinearHead` is BEST-RQ's (a softmax classifier
per codebook; SpeechBrain ``BestRQ`` ``linear``), and HuBERT's projection + cosine to label
embeddings / 0.1 (fairseq ``HubertModel.compute_logits`` with ``logit_temp``, torchaudio
``LogitGenerator``) is another :class:`DiscreteTargetHead` (``speechssl.models.hubert.CosineHead``). :func:`masked_prediction_loss`
works with any of them::

    loss = mean_k CE_k(masked frames) + unmasked_weight * mean_k CE_k(unmasked valid frames)

``CE_k`` is the mean cross-entropy of codebook ``k`` over the selected frames; averaging over
codebooks keeps the loss on the ``ln(codebook_size)`` scale whatever their number. Padding frames
never count. The head only sees the frames that count (the masked ones, plus the unmasked ones if
their weight is non-zero), so the ``[frames, codebook_size]`` logits of unmasked frames are never
computed when they do not matter. Losses and softmax run in fp32.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from speechssl.modules.linear import Linear
from speechssl.modules.quantizer import perplexity


class DiscreteTargetHead(nn.Module, abc.ABC):
    """A head that scores every code of every target set. Subclasses set ``num_classes``."""

    num_classes: list[int]

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N, in_dim] context frames -> one [N, num_classes[k]] logit tensor per target set k."""
        ...


class LinearHead(DiscreteTargetHead):
    """One linear softmax classifier per codebook (BEST-RQ).

    Args:
        in_dim: dimension of the context frames.
        num_classes: codes of each codebook, e.g. ``[8192]`` or ``[512] * 4``.
    """

    def __init__(self, in_dim: int, num_classes: Sequence[int]):
        super().__init__()
        self.num_classes = [int(v) for v in num_classes]
        if not self.num_classes or min(self.num_classes) < 2:
            raise ValueError(f"LinearHead: needs at least one codebook of >= 2 codes, got {list(num_classes)}")
        self.classifiers = nn.ModuleList(Linear(in_dim, v) for v in self.num_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [classifier(x) for classifier in self.classifiers]


@dataclasses.dataclass
class MaskedPredictionOutput:
    """Result of :func:`masked_prediction_loss`.

    Attributes:
        loss: scalar fp32, ``masked_loss + unmasked_weight * unmasked_loss``.
        masked_loss: scalar fp32, mean over codebooks of the CE on masked frames (0 if none is masked).
        unmasked_loss: scalar fp32, the same on unmasked valid frames (detached 0 when its weight is 0).
        accuracy: [codebooks] share of masked frames whose code is the argmax (floats, no grad).
        code_perplexity: [codebooks] perplexity of the target codes over valid frames (1 = one code
            in use, ``codebook_size`` = all equally often).
        codebook_usage: [codebooks] share of each codebook's codes that appear among the targets.
        num_masked: masked valid frames of the batch.
    """

    loss: torch.Tensor
    masked_loss: torch.Tensor
    unmasked_loss: torch.Tensor
    accuracy: list[float]
    code_perplexity: list[float]
    codebook_usage: list[float]
    num_masked: int


def _cross_entropy(head: DiscreteTargetHead, x: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """x [N, D], targets [N, K] -> (mean over codebooks of the mean CE, accuracy per codebook)."""
    logits = head(x)
    losses, accuracy = [], []
    for k, lg in enumerate(logits):
        lg = lg.float()
        losses.append(F.cross_entropy(lg, targets[:, k]))
        accuracy.append(float((lg.detach().argmax(-1) == targets[:, k]).float().mean()))
    return torch.stack(losses).mean(), accuracy


def masked_prediction_loss(head: DiscreteTargetHead, context: torch.Tensor, targets: torch.Tensor,
                           mask: torch.Tensor, valid: torch.Tensor, unmasked_weight: float = 0.0
                           ) -> MaskedPredictionOutput:
    """Cross-entropy of ``head(context)`` against discrete ``targets`` on masked frames.

    Args:
        head: maps [N, D] frames to ``K`` logit tensors (one per target set).
        context: [batch, frames, D] context-network output (computed from the masked input).
        targets: [batch, frames, K] long codes (anything on padding frames).
        mask: [batch, frames] bool, True = masked (never True on padding).
        valid: [batch, frames] bool, True = a real frame.
        unmasked_weight: weight of the CE on unmasked valid frames (HuBERT ``pred_nomask_weight``; 0 =
            masked frames only, as in BEST-RQ and HuBERT Base).

    Returns:
        :class:`MaskedPredictionOutput`.
    """
    if targets.dim() != 3 or targets.shape[:2] != context.shape[:2]:
        raise ValueError(f"masked_prediction_loss: targets {tuple(targets.shape)} do not match context "
                         f"{tuple(context.shape)} ([batch, frames, codebooks] vs [batch, frames, dim])")
    if targets.shape[-1] != len(head.num_classes):
        raise ValueError(f"masked_prediction_loss: {targets.shape[-1]} target sets for a head with "
                         f"{len(head.num_classes)} codebooks")
    if not 0.0 <= unmasked_weight:
        raise ValueError(f"masked_prediction_loss: unmasked_weight must be >= 0, got {unmasked_weight}")
    mask = mask & valid
    codes = targets[valid]  # [N_valid, K]
    for k, size in enumerate(head.num_classes):
        if codes.numel() and not 0 <= int(codes[:, k].min()) <= int(codes[:, k].max()) < size:
            raise ValueError(f"masked_prediction_loss: targets of codebook {k} span [{int(codes[:, k].min())}, "
                             f"{int(codes[:, k].max())}] on valid frames, outside the head's {size} classes")
    zero = context.new_zeros((), dtype=torch.float32)
    num_masked = int(mask.sum())
    if num_masked:
        masked_loss, accuracy = _cross_entropy(head, context[mask], targets[mask])
    else:  # keep every parameter in the graph (DDP) with a zero contribution
        logits = head(context.reshape(-1, context.shape[-1])[:1])
        masked_loss, accuracy = 0.0 * sum(lg.float().sum() for lg in logits), [0.0] * targets.shape[-1]
    unmasked = valid & ~mask
    if unmasked_weight > 0 and bool(unmasked.any()):
        unmasked_loss, _ = _cross_entropy(head, context[unmasked], targets[unmasked])
    else:
        unmasked_loss = zero
    with torch.no_grad():
        ppl, usage = [], []
        for k, size in enumerate(head.num_classes):
            counts = torch.bincount(codes[:, k], minlength=size).float()
            ppl.append(float(perplexity(counts / counts.sum().clamp(min=1))) if codes.numel() else 0.0)
            usage.append(float((counts > 0).float().mean()))
    loss = masked_loss + unmasked_weight * unmasked_loss
    return MaskedPredictionOutput(loss=loss.float(), masked_loss=masked_loss.float(),
                                  unmasked_loss=unmasked_loss.float(), accuracy=accuracy, code_perplexity=ppl,
                                  codebook_usage=usage, num_masked=num_masked)
