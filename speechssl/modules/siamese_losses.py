"""Losses that make two views of one utterance agree: NT-Xent (SimCLR) and COLA's bilinear
contrast with an optional MoCo-style negative queue, Barlow Twins' redundancy reduction, the
triplet margin loss with semi-hard mining, and the alignment / uniformity measures.

Shapes: ``z_a``, ``z_b`` [N, D] embeddings of the two views (row i of both: the same utterance).

* NT-Xent (Chen et al. 2020, SimCLR): cosine similarity / temperature; each of the 2N views has its
  other view as the positive and the other 2N - 2 views plus the queue as negatives.
* COLA (Saeed et al. 2021): similarity ``z_a W z_b^T`` (a learned bilinear form, no normalisation),
  cross-entropy of each anchor over the N candidates (plus the queue).
* Queue (He et al. 2020, MoCo): :class:`NegativeQueue` keeps the last ``size`` keys (detached, from the
  momentum encoder when the model has one), so a CPU batch of 16 sees thousands of negatives.
* False negatives (:func:`contrast_loss`): other utterances of the anchor's class (speaker) among the
  negatives, more of them the more negatives (a queue). ``debias``: Chuang et al. 2020's debiased
  contrastive loss, class prior ``tau_plus``: the negatives' term becomes
  max((sum_j e^{s_j} - tau_plus M e^{s_+}) / (1 - tau_plus), M e^{-1/t}) over the M negatives (their
  estimator with one positive sample). ``eliminate`` / ``attract``: Huynh et al. 2022's false-negative
  cancellation with the anchor as its own support view: the ``k`` negatives most similar to the anchor
  are taken out of the denominator (elimination) or become extra positives (attraction: the mean loss
  of the positive and of each of them, every denominator over all candidates).
* Barlow Twins (Zbontar et al. 2021): per-dimension batch-normalised embeddings, cross-correlation
  C = z_a^T z_b / N driven to the identity: sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2. Under
  DDP the batch statistics and C use the global batch (differentiable all-gather).
* Triplet (Schroff et al. 2015, FaceNet): anchor z_a[i], positive z_b[i], the negative is the
  semi-hard z_b[j] (farther than the positive, closest such; else the hardest), loss
  relu(d(a, p) - d(a, n) + margin) on L2-normalised embeddings.
* Alignment and uniformity (Wang & Isola 2020): ``E ||f(x) - f(y)||^2`` over positives and
  ``log E exp(-2 ||f(x) - f(y)||^2)`` over all pairs of normalised embeddings (lower is better).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class PairLossOutput:
    """``loss`` scalar; ``accuracy``: share of anchors whose positive scores highest (contrastive
    losses, else NaN); ``num_negatives``: negatives per anchor."""

    loss: torch.Tensor
    accuracy: float
    num_negatives: int


class NegativeQueue(nn.Module):
    """FIFO of the last ``size`` keys [size, dim] (buffers: checkpoints carry them; only filled slots count)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        """[filled, dim] a copy of the stored keys (empty before the first push); a copy, as the
        push after the loss overwrites the buffer the backward pass would otherwise read."""
        return self.keys[: int(self.filled)].clone()

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Store ``keys`` [n, dim] (detached), overwriting the oldest."""
        keys = keys.detach().to(self.keys)[-self.size:]
        n, p = keys.shape[0], int(self.pointer)
        idx = (torch.arange(n, device=keys.device) + p) % self.size
        self.keys[idx] = keys
        self.pointer.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(1) == targets).float().mean()) if logits.numel() else float("nan")


FALSE_NEGATIVES = ("none", "debias", "eliminate", "attract")


def contrast_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float, false_negatives: str = "none",
                  tau_plus: float = 0.0, k: int = 0) -> torch.Tensor:
    """Mean InfoNCE of each row of ``logits`` [A, C] (cosine / temperature; -inf: not a candidate) whose
    positive is column ``targets`` [A], every other finite column a negative, with the false-negative
    handling ``false_negatives`` (module docstring; ``tau_plus`` for debias, ``k`` for eliminate/attract)."""
    if false_negatives not in FALSE_NEGATIVES:
        raise ValueError(f"false_negatives must be one of {FALSE_NEGATIVES}, got {false_negatives!r}")
    if false_negatives == "none" or (false_negatives != "debias" and k == 0):
        return F.cross_entropy(logits, targets)
    rows = torch.arange(logits.shape[0], device=logits.device)
    pos = logits[rows, targets]
    negatives = torch.isfinite(logits)
    negatives[rows, targets] = False
    neg_logits = logits.masked_fill(~negatives, float("-inf"))  # the negatives only
    if false_negatives == "debias":
        m = negatives.sum(1).to(logits)
        neg = neg_logits.exp().sum(1)
        neg = torch.maximum((neg - tau_plus * m * pos.exp()) / (1 - tau_plus), m * math.exp(-1 / temperature))
        return (torch.log(pos.exp() + neg) - pos).mean()
    k = min(k, int(negatives.sum(1).min()))
    flagged = torch.zeros_like(negatives).scatter_(1, neg_logits.topk(k, dim=1).indices, True) & negatives
    if false_negatives == "eliminate":
        return F.cross_entropy(logits.masked_fill(flagged, float("-inf")), targets)
    log_prob = logits.log_softmax(1)
    flagged[rows, targets] = True
    return -(torch.where(flagged, log_prob, torch.zeros_like(log_prob)).sum(1) / flagged.sum(1)).mean()


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, queue: torch.Tensor | None = None,
            false_negatives: str = "none", tau_plus: float = 0.0, k: int = 0) -> PairLossOutput:
    """SimCLR's NT-Xent over 2N views, plus ``queue`` [Q, D] keys as extra negatives of every view
    (``false_negatives``, ``tau_plus``, ``k``: :func:`contrast_loss`)."""
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    if queue is not None and queue.numel():
        sim = torch.cat([sim, z @ F.normalize(queue.float(), dim=1).T / temperature], 1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = contrast_loss(sim, targets, temperature, false_negatives, tau_plus, k)
    negatives = 2 * n - 2 + (queue.shape[0] if queue is not None else 0)
    return PairLossOutput(loss, _accuracy(sim.detach(), targets), negatives)


def key_contrast(queries: torch.Tensor, keys: torch.Tensor, temperature: float, queue: torch.Tensor | None = None,
                 false_negatives: str = "none", tau_plus: float = 0.0, k: int = 0) -> PairLossOutput:
    """MoCo: cosine similarity / temperature of each query (view a, online encoder) with every key of the
    batch (view b, momentum encoder; its own key is the positive) and the queue's keys
    (``false_negatives``, ``tau_plus``, ``k``: :func:`contrast_loss`)."""
    q = F.normalize(queries.float(), dim=1)
    logits = q @ F.normalize(keys.float(), dim=1).T / temperature
    if queue is not None and queue.numel():
        logits = torch.cat([logits, q @ F.normalize(queue.float(), dim=1).T / temperature], 1)
    targets = torch.arange(q.shape[0], device=q.device)
    negatives = q.shape[0] - 1 + (queue.shape[0] if queue is not None else 0)
    loss = contrast_loss(logits, targets, temperature, false_negatives, tau_plus, k)
    return PairLossOutput(loss, _accuracy(logits.detach(), targets), negatives)


def bilinear_contrast(z_a: torch.Tensor, z_b: torch.Tensor, weight: torch.Tensor,
                      queue: torch.Tensor | None = None) -> PairLossOutput:
    """COLA: logits[i, j] = z_a[i] W z_b[j]; cross-entropy of anchor i over its N candidates (+ queue)."""
    anchors = z_a.float() @ weight.float()
    logits = anchors @ z_b.float().T
    if queue is not None and queue.numel():
        logits = torch.cat([logits, anchors @ queue.float().T], 1)
    targets = torch.arange(z_a.shape[0], device=z_a.device)
    loss = F.cross_entropy(logits, targets)
    negatives = z_a.shape[0] - 1 + (queue.shape[0] if queue is not None else 0)
    return PairLossOutput(loss, _accuracy(logits.detach(), targets), negatives)


def _gather_global(z: torch.Tensor) -> torch.Tensor:
    """All ranks' rows (differentiable) under DDP, else ``z``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        import warnings

        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(z), 0)
    return z


def barlow_twins(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float, eps: float = 1e-5) -> PairLossOutput:
    """Barlow Twins on the global batch; loss = on-diagonal + lambd x off-diagonal terms (sums over D)."""
    za, zb = _gather_global(z_a.float()), _gather_global(z_b.float())
    if za.shape[0] < 2:
        raise ValueError(f"barlow_twins needs at least 2 utterances in the (global) batch, got {za.shape[0]}")
    za = (za - za.mean(0)) / (za.var(0, unbiased=False) + eps).sqrt()
    zb = (zb - zb.mean(0)) / (zb.var(0, unbiased=False) + eps).sqrt()
    c = za.T @ zb / za.shape[0]
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return PairLossOutput(on + lambd * off, float("nan"), 0)


def triplet_semi_hard(z_a: torch.Tensor, z_b: torch.Tensor, margin: float) -> PairLossOutput:
    """Triplet margin loss with in-batch semi-hard negatives (see the module docstring).

    ``accuracy``: share of anchors closer to their positive than to every negative."""
    a, b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"triplet loss needs at least 2 utterances in the batch, got {n}")
    dist = torch.cdist(a, b).pow(2)  # [N, N] squared distances anchor i -> candidate j
    pos = torch.diagonal(dist)
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    neg = dist.masked_fill(eye, float("inf"))
    farther = neg > pos[:, None]
    semi = torch.where(farther, neg, torch.full_like(neg, float("inf"))).min(1).values
    hardest = neg.min(1).values
    chosen = torch.where(torch.isfinite(semi), semi, hardest)
    loss = F.relu(pos - chosen + margin).mean()
    return PairLossOutput(loss, float((hardest > pos).float().mean()), n - 1)


@torch.no_grad()
def alignment_uniformity(z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[float, float]:
    """(alignment, uniformity) of L2-normalised embeddings (Wang & Isola 2020, alpha 2, t 2)."""
    a, b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
    align = float((a - b).pow(2).sum(1).mean())
    z = torch.cat([a, b])
    sq = torch.pdist(z).pow(2)
    uniform = float(torch.log(torch.exp(-2 * sq).mean().clamp(min=1e-30))) if sq.numel() else 0.0
    return align, uniform
