"""InfoNCE for CPC (van den Oord et al. 2018; Riviere et al. 2020, ``CPC_audio`` ``criterion.py``).

For every valid frame ``t`` of utterance ``b`` and every step ``k = 1..K`` with ``t + k`` still
valid, the prediction ``p_k(b, t)`` must pick the true future latent ``z(b, t + k)`` among
``N`` negatives by dot product::

    loss(b, t, k) = -log softmax([p·z(b, t+k), p·z_neg_1, ..., p·z_neg_N])[0]

Negatives are sampled on the device, all at once (no Python loop over frames), from the valid
frames of a *group*: the same utterance (``"utterance"``), the whole batch (``"batch"``), or all
utterances of the same speaker in the batch (``"speaker"``). A query's ``N`` negatives are shared
by its ``K`` steps (as in ``CPC_audio``); a negative that happens to be the positive of step
``k`` is masked out of that step's softmax, so the positive is never also a negative and padding
is never either.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from speechssl.modules.negatives import sample_in_groups
from speechssl.modules.padding import lengths_to_mask

__all__ = ["InfoNCEOutput", "dense_scores", "infonce", "sample_in_groups", "sample_negatives"]

NegativeMode = Literal["utterance", "batch", "speaker"]

# infonce scores all B x T frames densely (one matmul) when B x T <= this x N negatives per query,
# and gathers the N negatives otherwise (tools/bench/infonce.py measures both)
DENSE_SCORES_RATIO = 16
DENSE_SCORES_MAX = 1 << 25  # scores of at most 32 M floats (128 MB)


@dataclasses.dataclass
class InfoNCEOutput:
    """``loss``: scalar fp32 mean over valid (frame, step) pairs; ``accuracy``: [K] fraction of
    pairs whose positive scores strictly above every negative; ``counts``: [K] valid pairs."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    counts: torch.Tensor


def sample_negatives(
    lengths: torch.Tensor,
    frames: int,
    num_negatives: int,
    mode: NegativeMode = "utterance",
    speaker_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flat indices ``b * frames + t`` of negatives for every query frame.

    Args:
        lengths (Tensor): [batch] valid frames.
        frames: padded number of frames T.
        num_negatives: N.
        mode: ``"utterance"``, ``"batch"`` or ``"speaker"`` (needs ``speaker_ids``).
        speaker_ids (Tensor): [batch] integer speaker of each utterance.
        generator: optional RNG.

    Returns:
        LongTensor: [batch, frames, N]; every index points at a valid frame of the query's group.
    """
    batch = lengths.shape[0]
    device = lengths.device
    valid = lengths_to_mask(lengths, frames)  # [B, T]
    pool = torch.nonzero(valid.flatten(), as_tuple=True)[0]  # [M] flat indices of valid frames
    utt_of_frame = pool // max(frames, 1)
    if mode == "utterance":
        utt_groups = torch.arange(batch, device=device)
    elif mode == "batch":
        utt_groups = torch.zeros(batch, dtype=torch.long, device=device)
    elif mode == "speaker":
        if speaker_ids is None:
            raise ValueError("negatives mode 'speaker' needs speaker_ids")
        utt_groups = speaker_ids.to(device=device, dtype=torch.long)
    else:
        raise ValueError(f"unknown negatives mode {mode!r}; choices: utterance, batch, speaker")
    query_groups = utt_groups[:, None].expand(batch, frames)
    picked = sample_in_groups(utt_groups[utt_of_frame], query_groups, num_negatives, generator)
    return pool[picked]


def dense_scores(batch: int, frames: int, steps: int, num_negatives: int) -> bool:
    """Whether :func:`infonce` scores every frame densely for this shape (else it gathers negatives)."""
    frames_total = batch * frames
    return frames_total <= DENSE_SCORES_RATIO * num_negatives and frames_total**2 * steps <= DENSE_SCORES_MAX


def infonce(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    negative_index: torch.Tensor,
) -> InfoNCEOutput:
    """Contrastive loss of K-step predictions against true future latents and negatives.

    Args:
        predictions (Tensor): [batch, frames, K, dim]; ``predictions[b, t, k-1]`` predicts
            ``targets[b, t + k]``.
        targets (Tensor): [batch, frames, dim] latents z.
        lengths (Tensor): [batch] valid frames of ``targets``.
        negative_index (Tensor): [batch, frames, N] flat indices into ``targets.view(-1, dim)``
            (from :func:`sample_negatives`).

    Returns:
        InfoNCEOutput; logits are computed in fp32.
    """
    batch, frames, steps, dim = predictions.shape
    device = predictions.device
    pred = predictions.float()
    z = targets.float()
    t_idx = torch.arange(frames, device=device)
    k_idx = torch.arange(1, steps + 1, device=device)
    future = t_idx[:, None] + k_idx[None, :]  # [T, K]
    valid = future[None] < lengths[:, None, None]  # [B, T, K]
    pos_flat = torch.arange(batch, device=device)[:, None, None] * frames + future.clamp(max=frames - 1)[None]
    z_flat = z.reshape(batch * frames, dim)
    # index_select, not advanced indexing: same values, a much cheaper backward on CPU (tools/bench)
    positives = z_flat.index_select(0, pos_flat.reshape(-1)).view(*pos_flat.shape, dim)  # [B, T, K, D]
    pos_logits = (pred * positives).sum(-1)  # [B, T, K]
    num_neg = negative_index.shape[-1]
    if dense_scores(batch, frames, steps, num_neg):
        # Few frames for many negatives (e.g. 90 of them from a batch of 800 frames): score every
        # query against every frame in one matmul, [BTK, D] @ [D, BT], and pick each query's N
        # scores. The matmul does BT / N times the gathered path's FLOPs, but at the matmul rate,
        # while the gathered path copies N x D floats per query (forward + backward 3.4x faster at
        # B T = 8 x 100, K = 4, N = 100, D = 256, one thread of an AVX2 AMD EPYC).
        scores = (pred.reshape(-1, dim) @ z_flat.t()).view(batch * frames, steps, batch * frames)
        pick = negative_index.reshape(batch * frames, 1, num_neg).expand(-1, steps, -1)
        neg_logits = scores.gather(2, pick).view(batch, frames, steps, num_neg)  # [B, T, K, N]
    else:
        negatives = z_flat.index_select(0, negative_index.reshape(-1)).view(batch * frames, -1, dim)  # [BT, N, D]
        # [BT, N, D] @ [BT, D, K], then a view as [B, T, K, N]: the (large) negatives are read in place,
        # where einsum("btkd,btnd->btkn") copied them into [BT, D, N] first (CPC modified: 208 MB a step)
        neg_logits = torch.bmm(negatives, pred.reshape(batch * frames, steps, dim).transpose(1, 2))
        neg_logits = neg_logits.view(batch, frames, -1, steps).transpose(2, 3)  # [B, T, K, N]
    same = negative_index[:, :, None, :] == pos_flat[..., None]  # [B, T, K, N]
    neg_logits = neg_logits.masked_fill(same, float("-inf"))
    logits = torch.cat([pos_logits[..., None], neg_logits], dim=-1)
    nll = -torch.log_softmax(logits, dim=-1)[..., 0]  # [B, T, K]
    weight = valid.to(nll.dtype)
    counts = weight.sum(dim=(0, 1))
    total = counts.sum()
    if total == 0:
        raise ValueError(
            f"no frame has a valid future target for K={steps} steps (longest input has "
            f"{int(lengths.max()) if lengths.numel() else 0} frames); use longer crops"
        )
    loss = (nll.masked_fill(~valid, 0.0)).sum() / total
    with torch.no_grad():
        correct = (pos_logits > neg_logits.max(dim=-1).values) & valid
        accuracy = correct.to(nll.dtype).sum(dim=(0, 1)) / counts.clamp(min=1)
    return InfoNCEOutput(loss=loss, accuracy=accuracy, counts=counts)
