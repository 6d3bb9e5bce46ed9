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

``cross_negatives > 0`` adds fairseq's ``cross_sample_negatives``: distractors drawn uniformly from
the masked frames of *every* utterance of the batch (never the positive itself). Same-utterance
distractors only differ in content, so the context is free to drop who is speaking; batch
distractors from other utterances reward keeping it (CPC draws its negatives from the batch).
The default (0) draws nothing extra: the same RNG stream and numbers as before.
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


def sample_cross_distractors(mask: torch.Tensor, num_negatives: int,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``num_negatives`` batch-wide distractors per masked frame of ``mask`` [batch, frames] bool.

    Returns [N, K] indices into the N masked frames in ``mask.nonzero()`` order (row-major), never
    the frame's own index (fairseq ``sample_negatives`` with ``cross_sample_negatives``). With a
    single masked frame in the batch there is nothing to draw: every index is then 0 (itself) and
    the caller must mask it out.
    """
    n = int(mask.sum())
    if n == 0:
        return torch.zeros(0, num_negatives, dtype=torch.long, device=mask.device)
    one_group = torch.zeros(n, dtype=torch.long, device=mask.device)  # the whole batch is one group
    return sample_in_groups(one_group, one_group, num_negatives, generator,
                            exclude=torch.arange(n, device=mask.device))


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
    cross_negatives: int = 0,
    cross_distractors: torch.Tensor | None = None,
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
        cross_negatives: extra distractors per masked frame from the masked frames of any utterance
            of the batch (fairseq ``cross_sample_negatives``); logits become [N, 1 + K + cross_negatives].
            With ``num_negatives`` 0 only batch-wide distractors are used.
        cross_distractors: [N, cross_negatives] pre-drawn indices into the masked frames (tests).
    """
    if num_negatives < 1 and cross_negatives < 1:
        raise ValueError(f"contrastive_loss: need num_negatives or cross_negatives >= 1, got {num_negatives}, "
                         f"{cross_negatives}")
    if distractors is None:
        # K = 0 draws an empty [N, 0] table: no same-utterance distractors, no RNG consumed.
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
    if cross_negatives > 0:
        if cross_distractors is None:
            cross_distractors = sample_cross_distractors(mask, cross_negatives, generator)
        # [N, N] cosines between every masked context and every masked target of the batch.
        c_masked, q_masked = c[b, t], q[b, t]
        cross = (c_masked @ q_masked.T).gather(1, cross_distractors)  # [N, K']
        if target_codes is not None:
            codes = target_codes[b, t]  # [N, G]
        else:
            codes = targets[b, t]
        same_cross = (codes[cross_distractors] == codes[:, None, :]).all(-1)
        own = cross_distractors == torch.arange(cross_distractors.shape[0], device=mask.device)[:, None]
        neg = torch.cat([neg, cross.masked_fill(same_cross | own, float("-inf"))], dim=1)
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
