"""speechssl.modules.negatives: the one negative sampler behind wav2vec 2.0's distractors and CPC's negatives."""

from __future__ import annotations

import torch

from speechssl.modules import contrastive, infonce, negatives
from speechssl.modules.contrastive import sample_distractors


def _fairseq_style_distractors(mask: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The former stand-alone wav2vec 2.0 sampler (rank shift over a packed table), as a reference."""
    b, t = mask.nonzero(as_tuple=True)
    packed = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    rank = (mask.cumsum(1) - 1)[b, t]
    n = mask.sum(1)[b]
    u = torch.rand(b.shape[0], k, generator=generator)
    j = torch.floor(u * (n - 1).clamp(min=1).to(torch.float32)[:, None]).long()
    j = torch.minimum(j, (n - 2).clamp(min=0)[:, None])
    j = j + (j >= rank[:, None]).long()
    j = torch.where((n > 1)[:, None], j, torch.zeros_like(j))
    return packed[b[:, None], j]


def test_both_losses_use_the_one_sampler():
    assert contrastive.sample_in_groups is negatives.sample_in_groups
    assert infonce.sample_in_groups is negatives.sample_in_groups


def test_distractors_are_the_same_draws_as_before_the_merge():
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        mask = torch.rand(3, 40, generator=g) < 0.4
        mask[2] = False
        mask[2, 5] = True  # one masked frame: no distractor
        got = sample_distractors(mask, 12, torch.Generator().manual_seed(seed))
        want = _fairseq_style_distractors(mask, 12, torch.Generator().manual_seed(seed))
        assert torch.equal(got.distractor_frames, want)
        assert not bool(got.valid[got.batch_index == 2].any())


def test_exclude_is_never_drawn_and_the_rest_are_uniform():
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    queries = torch.tensor([0, 1])
    exclude = torch.tensor([2, 5])  # candidate 2 (group 0) and 5 (group 1)
    idx = negatives.sample_in_groups(groups, queries, 30000, torch.Generator().manual_seed(0), exclude=exclude)
    assert set(idx[0].tolist()) == {0, 1, 3} and set(idx[1].tolist()) == {4}
    share = torch.bincount(idx[0], minlength=4)[[0, 1, 3]].float() / 30000
    torch.testing.assert_close(share, torch.full((3,), 1 / 3), atol=0.02, rtol=0)
