"""Contrastive (InfoNCE) loss over masked frames, wav2vec 2.0 style (Baevski et al. 2020, eq. 3).

For every masked frame ``t`` of utterance ``b`` the context ``c[b, t]`` must pick its target
``q[b, t]`` among ``K`` distractors ``q[b, t']`` drawn uniformly (with replacement) from the
*other masked frames of the same utterance* (fairseq ``Wav2Vec2Model.sample_negatives``, no
cross-utterance negatives). Logits are ``cos(c, q) / temperature``; a distractor identical to the
target (same codes) is masked out, as in fairseq.

Sampling is :func:`speechssl.modules.negatives.sample_in_groups` (CPC's sampler too) over the
masked frames grouped by utterance, excluding the query itself: a distractor rank ``j`` in
``[0, n_b - 1)`` is shifted by one when ``j >= rank(t)``, so it can never be the positive nor a
padding / unmasked frame.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

from speechssl.modules.negatives import sample_in_groups


@dataclasses.dataclass
class Distractors:
    """Indices describing the masked frames and their distractors.

    Attributes:
        batch_index, frame_index: [N] (utterance, frame) of each masked frame, N = mask.sum().
        distractor_frames: [N, K] frame index (in the same utterance) of each distractor.
        valid: [N, K] bool, False where no distractor exists (an utterance with one masked frame).
    """

    batch_index: torch.Tensor
    frame_index: torch.Tensor
    distractor_frames: torch.Tensor
    valid: torch.Tensor


def sample_distractors(mask: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None) -> Distractors:
    """Draw ``num_negatives`` distractors per masked frame from ``mask`` [batch, frames] bool."""
    batch_index, frame_index = mask.nonzero(as_tuple=True)  # [N] each, utterance-major time order
    n = mask.sum(1)[batch_index]  # [N] masked frames of each query's utterance
    valid = (n > 1)[:, None].expand(-1, num_negatives)
    if batch_index.numel() == 0:
        empty = torch.zeros(0, num_negatives, dtype=torch.long, device=mask.device)
        return Distractors(batch_index, frame_index, empty, valid)
    # candidates = the masked frames themselves; each query excludes its own entry
    picked = sample_in_groups(batch_index, batch_index, num_negatives, generator,
                              exclude=torch.arange(batch_index.numel(), device=mask.device))
    # an utterance with one masked frame has no distractor: point at the frame itself (masked out)
    distractor_frames = torch.where(valid, frame_index[picked], frame_index[:, None])
    return Distractors(batch_index, frame_index, distractor_frames, valid)


@dataclasses.dataclass
class ContrastiveOutput:
    """``loss``: mean InfoNCE over masked frames (fp32 scalar); ``accuracy``: share of masked frames
    whose target scores highest; ``logits``: [N, 1 + K] (column 0 = positive); ``num_targets``: N."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    logits: torch.Tensor
    num_targets: int


def contrastive_loss(
    context: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    num_negatives: int,
    temperature: float = 0.1,
    target_codes: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    distractors: Distractors | None = None,
) -> ContrastiveOutput:
    """InfoNCE between ``context`` and ``targets`` at the masked frames.

    Args:
        context: [batch, frames, dim] predictions (projected context network output).
        targets: [batch, frames, dim] targets (projected quantized features).
        mask: [batch, frames] bool, True = masked frame (the only frames scored or used as distractors).
        num_negatives: K distractors per masked frame.
        temperature: cosine-similarity temperature (wav2vec 2.0: 0.1).
        target_codes: [batch, frames, groups] codes of the targets; distractors with the same codes
            as the positive are masked out (None: compare the target vectors themselves).
        generator: RNG for the distractors; ``distractors``: pre-drawn ones (tests).
    """
    if distractors is None:
        distractors = sample_distractors(mask, num_negatives, generator)
    b, t, tn = distractors.batch_index, distractors.frame_index, distractors.distractor_frames
    c = F.normalize(context.float(), dim=-1, eps=1e-8)
    q = F.normalize(targets.float(), dim=-1, eps=1e-8)
    # Cosine of every (frame, frame) pair per utterance, then gather: far less memory than
    # materialising [N, K, dim] distractor vectors.
    sims = torch.bmm(c, q.transpose(1, 2))  # [B, T, T]
    pos = sims[b, t, t]  # [N]
    neg = sims[b[:, None], t[:, None], tn]  # [N, K]
    if target_codes is not None:
        same = (target_codes[b[:, None], tn] == target_codes[b, t][:, None, :]).all(-1)
    else:
        same = (targets[b[:, None], tn] == targets[b, t][:, None, :]).all(-1)
    neg = neg.masked_fill(same | ~distractors.valid, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    if logits.shape[0] == 0:
        zero = context.sum() * 0.0
        return ContrastiveOutput(zero.float(), zero.detach().float(), logits, 0)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        # ties count as wrong (fairseq: argmax == 0 and not all logits equal)
        best = logits.argmax(1)
        accuracy = ((best == 0) & (logits[:, 1:] < logits[:, :1]).all(1)).float().mean()
    return ContrastiveOutput(loss, accuracy, logits, int(logits.shape[0]))
