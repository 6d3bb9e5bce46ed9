"""Shared wav2vec 2.0 blocks: conv frame arithmetic, span masking, distractors, contrastive loss."""

import math

import pytest
import torch
from torch.nn import functional as F

from speechssl.modules.contrastive import (
    Distractors,
    contrastive_loss,
    sample_cross_distractors,
    sample_distractors,
)
from speechssl.modules.conv import ConvFeatureEncoder, masked_group_norm, receptive_field
from speechssl.modules.masking import span_mask
from speechssl.modules.transformer import TransformerEncoder

BASE = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
SMALL = [(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2


def test_receptive_field_and_stride_of_base():
    assert receptive_field(BASE) == (400, 320)


@pytest.mark.parametrize("norm", ["group_norm", "layer_norm", "none"])
def test_conv_lengths_match_formula_and_batching(norm):
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(1, SMALL, norm=norm).eval()
    lengths = torch.tensor([399, 400, 719, 720, 3000])
    wavs = torch.randn(len(lengths), 3000) * (torch.arange(3000)[None] < lengths[:, None])
    with torch.no_grad():
        out, out_lengths = enc(wavs.unsqueeze(1), lengths)
        expected = [0 if n < 400 else (n - 400) // 320 + 1 for n in lengths.tolist()]
        assert out_lengths.tolist() == expected
        for i, n in enumerate(lengths.tolist()):
            if n < 400:
                continue
            single, single_len = enc(wavs[i : i + 1, :n].unsqueeze(1), lengths[i : i + 1])
            assert single.shape[1] == single_len.item() == expected[i]
            torch.testing.assert_close(out[i, : expected[i]], single[0], atol=1e-5, rtol=1e-5)


def test_masked_group_norm_equals_unpadded_group_norm():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 4)
    x = torch.randn(2, 4, 10)
    lengths = torch.tensor([10, 6])
    y = masked_group_norm(x, lengths, norm)
    torch.testing.assert_close(y[0], norm(x[:1])[0])
    torch.testing.assert_close(y[1, :, :6], norm(x[1:, :, :6])[0])


def test_span_mask_ratio_padding_and_min_masks():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(200, 600, (200,), generator=gen)
    mask = span_mask(lengths, 600, mask_prob=0.065, span=10, min_masks=2, generator=gen)
    valid = torch.arange(600)[None] < lengths[:, None]
    assert not (mask & ~valid).any(), "padding must never be masked"
    ratio = mask.sum().item() / valid.sum().item()
    assert abs(ratio - (1 - (1 - 0.065) ** 10)) < 0.03, ratio
    # min_masks with mask_prob 0: two spans of 10 -> between 10 and 20 masked frames
    few = span_mask(torch.tensor([50, 50, 50]), 60, mask_prob=0.0, span=10, min_masks=2, generator=gen)
    counts = few.sum(1)
    assert ((counts >= 10) & (counts <= 20)).all(), counts
    assert not few[:, 50:].any()
    # empty utterances get nothing; shorter than the span: masked wholly (clipped span)
    edge = span_mask(torch.tensor([0, 4]), 8, mask_prob=0.5, span=10, min_masks=1, generator=gen)
    assert edge[0].sum() == 0
    assert edge[1].tolist() == [True] * 4 + [False] * 4


def test_span_mask_spans_are_contiguous_runs_of_span():
    gen = torch.Generator().manual_seed(1)
    mask = span_mask(torch.tensor([300]), 300, mask_prob=0.01, span=7, min_masks=1, generator=gen)[0]
    runs, run = [], 0
    for m in mask.tolist() + [False]:
        if m:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert runs and all(r >= 7 for r in runs)


def test_distractors_never_positive_padding_or_unmasked():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([120, 40, 7])
    mask = span_mask(lengths, 120, mask_prob=0.065, span=10, min_masks=2, generator=gen)
    mask[2] = False
    mask[2, 3] = True  # a single masked frame: no distractor exists
    d = sample_distractors(mask, num_negatives=30, generator=gen)
    assert d.distractor_frames.shape == (int(mask.sum()), 30)
    b, t, tn = d.batch_index, d.frame_index, d.distractor_frames
    ok = d.valid
    assert not (tn[ok] == t[:, None].expand_as(tn)[ok]).any(), "a distractor equals its positive"
    assert mask[b[:, None].expand_as(tn)[ok], tn[ok]].all(), "distractors must be masked frames"
    assert (tn[ok] < lengths[b][:, None].expand_as(tn)[ok]).all()
    single = b == 2
    assert not ok[single].any() and ok[~single].all()


def test_contrastive_loss_hand_case():
    # one utterance, frames 0 and 1 masked, K = 1: each frame's distractor is the other frame
    c = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    q = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]]])
    mask = torch.tensor([[True, True, False]])
    out = contrastive_loss(c, q, mask, num_negatives=1, temperature=0.5)
    cos = F.cosine_similarity
    s00, s01 = cos(c[0, 0], q[0, 0], dim=0), cos(c[0, 0], q[0, 1], dim=0)
    s11, s10 = cos(c[0, 1], q[0, 1], dim=0), cos(c[0, 1], q[0, 0], dim=0)
    l0 = -torch.log_softmax(torch.stack([s00, s01]) / 0.5, 0)[0]
    l1 = -torch.log_softmax(torch.stack([s11, s10]) / 0.5, 0)[0]
    assert out.loss.item() == pytest.approx(((l0 + l1) / 2).item(), abs=1e-6)
    # by hand: frame 0 logits (2, 1.414), frame 1 (1.414, 0)
    by_hand = (math.log(1 + math.exp(math.sqrt(2) - 2)) + math.log(1 + math.exp(-math.sqrt(2)))) / 2
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-5)
    assert out.accuracy.item() == 1.0 and out.num_targets == 2


def test_distractor_equal_to_positive_is_masked_out():
    c = torch.randn(1, 4, 3)
    q = torch.randn(1, 4, 3)
    mask = torch.tensor([[True, True, True, False]])
    codes = torch.tensor([[[1], [1], [2], [0]]])  # frames 0 and 1 share a code
    d = Distractors(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), torch.tensor([[1, 2], [0, 2], [0, 1]]),
                    torch.ones(3, 2, dtype=torch.bool))
    out = contrastive_loss(c, q, mask, 2, 0.1, target_codes=codes, distractors=d)
    assert torch.isinf(out.logits[0, 1]) and torch.isinf(out.logits[1, 1])
    assert torch.isfinite(out.logits[2]).all()
    assert torch.isfinite(out.loss)


def test_cross_distractors_span_the_batch_and_never_the_positive():
    gen = torch.Generator().manual_seed(0)
    mask = span_mask(torch.tensor([100, 100, 60]), 100, mask_prob=0.065, span=10, min_masks=2, generator=gen)
    n = int(mask.sum())
    idx = sample_cross_distractors(mask, 40, generator=gen)
    assert idx.shape == (n, 40) and int(idx.min()) >= 0 and int(idx.max()) < n
    assert not (idx == torch.arange(n)[:, None]).any(), "a batch distractor is the positive itself"
    utt = mask.nonzero(as_tuple=True)[0]
    assert (utt[idx] != utt[:, None]).float().mean() > 0.5, "batch distractors should mostly come from other utterances"


def test_cross_negatives_hand_case_and_default_unchanged():
    # Two utterances with one masked frame each: no same-utterance distractor exists, so only the
    # batch-wide one (the other utterance's frame) competes with the positive.
    c = torch.tensor([[[1.0, 0.0], [3.0, 3.0]], [[0.0, 1.0], [3.0, 3.0]]])
    q = torch.tensor([[[2.0, 0.0], [1.0, 5.0]], [[1.0, 1.0], [0.0, 2.0]]])
    mask = torch.tensor([[True, False], [True, False]])
    out = contrastive_loss(c, q, mask, num_negatives=0, temperature=0.5, cross_negatives=1)
    assert out.logits.shape == (2, 2)
    r = math.sqrt(0.5)
    # frame (0,0): pos cos(c00, q00) = 1, batch distractor cos(c00, q10) = r; frame (1,0): pos r, distractor 0
    by_hand = (math.log(1 + math.exp((r - 1) / 0.5)) + math.log(1 + math.exp(-r / 0.5))) / 2
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-5)
    # same codes as the positive: masked out exactly like same-utterance distractors
    codes = torch.tensor([[[3], [0]], [[3], [1]]])
    out = contrastive_loss(c, q, mask, num_negatives=0, temperature=0.5, target_codes=codes, cross_negatives=1)
    assert torch.isinf(out.logits[:, 1]).all() and out.loss.item() == pytest.approx(0.0, abs=1e-6)
    # the default draws no batch distractors: the same logits and RNG stream as before the option
    mask = torch.ones(2, 2, dtype=torch.bool)
    a = contrastive_loss(c, q, mask, 1, 0.1, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    b = contrastive_loss(c, q, mask, 1, 0.1, generator=g, cross_negatives=0)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=_after_draws(3, mask)))
    with pytest.raises(ValueError, match="num_negatives or cross_negatives"):
        contrastive_loss(c, q, mask, 0, 0.1)


def _after_draws(seed: int, mask: torch.Tensor) -> torch.Generator:
    """A generator advanced by exactly one same-utterance draw of K = 1 over ``mask``."""
    g = torch.Generator().manual_seed(seed)
    sample_distractors(mask, 1, generator=g)
    return g


def test_transformer_padding_does_not_leak():
    torch.manual_seed(0)
    for first in (False, True):
        enc = TransformerEncoder(16, 2, 4, 32, layer_norm_first=first, pos_conv_kernel=8, pos_conv_groups=4).eval()
        x = torch.randn(2, 30, 16)
        pad = torch.arange(30)[None] >= torch.tensor([30, 11])[:, None]
        with torch.no_grad():
            out, layers = enc(x, pad, return_layers=True)
            single, _ = enc(x[1:, :11])
        assert len(layers) == 2
        torch.testing.assert_close(out[1, :11], single[0], atol=1e-5, rtol=1e-5)
