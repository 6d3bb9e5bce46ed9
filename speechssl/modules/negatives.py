"""Negative (distractor) sampling for contrastive losses: one sampler for every family.

wav2vec 2.0 (:mod:`speechssl.modules.contrastive`) draws distractors from the other masked frames
of the same utterance; CPC (:mod:`speechssl.modules.infonce`) draws negatives from the valid
frames of a group (utterance, batch or speaker). Both are "draw uniformly, with replacement, from
the query's group, optionally never the query itself": :func:`sample_in_groups`. It runs on the
device, all at once (no Python loop over frames).
"""

from __future__ import annotations

import torch


def sample_in_groups(
    frame_groups: torch.Tensor,
    query_groups: torch.Tensor,
    num: int,
    generator: torch.Generator | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniformly draw ``num`` candidates (with replacement) from each query's group.

    Args:
        frame_groups (Tensor): [M] non-negative group id of every candidate frame.
        query_groups (Tensor): [...] group id of every query.
        num: draws per query.
        generator: optional RNG (on the tensors' device).
        exclude (Tensor): optional [...] index (into the M candidates) of one candidate per query
            that must never be drawn for it -- the query itself (wav2vec 2.0: a masked frame is not
            its own distractor); it must belong to the query's group. The draw is then uniform over
            the group's other candidates: a rank ``j`` in ``[0, n - 1)`` is shifted by one when
            ``j >= rank(excluded)`` (fairseq ``Wav2Vec2Model.sample_negatives``).

    Returns:
        LongTensor: [..., num] indices into the M candidates, each in the query's group. A query
        whose group has no candidate (or, with ``exclude``, no other candidate) gets an index that
        callers must mask.
    """
    if frame_groups.numel() == 0:
        raise ValueError("cannot sample negatives: there are no valid frames in the batch")
    num_groups = int(max(int(frame_groups.max()), int(query_groups.max()) if query_groups.numel() else 0)) + 1
    order = torch.argsort(frame_groups, stable=True)
    counts = torch.bincount(frame_groups, minlength=num_groups)
    offsets = torch.cumsum(counts, 0) - counts
    q_counts = counts[query_groups]
    if exclude is not None:
        q_counts = q_counts - 1
    q_counts = q_counts.clamp(min=1)
    u = torch.rand((*query_groups.shape, num), device=frame_groups.device, generator=generator)
    r = torch.minimum((u * q_counts[..., None]).long(), q_counts[..., None] - 1)
    if exclude is not None:
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel(), device=order.device)
        rank = position[exclude] - offsets[query_groups]  # the excluded candidate's rank in its group
        r = r + (r >= rank[..., None]).long()
    pos = (offsets[query_groups][..., None] + r).clamp(max=frame_groups.numel() - 1)
    return order[pos]
