"""CPC InfoNCE and negative sampling (speechssl.modules.infonce)."""

from __future__ import annotations

import math

import pytest
import torch

import speechssl.modules.infonce as nce
from speechssl.modules.infonce import infonce, sample_in_groups, sample_negatives


def test_hand_computed_infonce():
    # one utterance, 3 frames, K = 1, dim 1: predictions p(t), latents z = [1, 2, 3]
    z = torch.tensor([[[1.0], [2.0], [3.0]]])
    pred = torch.tensor([[[[1.0]], [[0.5]], [[9.0]]]])  # [B=1, T=3, K=1, D=1]
    lengths = torch.tensor([3])
    # negatives (flat indices): t=0 -> z[2]=3 ; t=1 -> z[0]=1 ; t=2 -> anything (no target)
    neg = torch.tensor([[[2], [0], [1]]])
    out = infonce(pred, z, lengths, neg)
    # t=0: pos 1*2=2, neg 1*3=3 ; t=1: pos 0.5*3=1.5, neg 0.5*1=0.5
    l0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(3)))
    l1 = -math.log(math.exp(1.5) / (math.exp(1.5) + math.exp(0.5)))
    assert out.loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert out.accuracy.tolist() == [0.5]  # t=1 right, t=0 wrong
    assert out.counts.tolist() == [2.0]


def test_negative_equal_to_positive_is_masked():
    z = torch.tensor([[[1.0], [2.0], [3.0]]])
    pred = torch.ones(1, 3, 1, 1)
    neg = torch.tensor([[[1, 2], [2, 2], [0, 0]]])  # t=0: index 1 is the positive of t=0
    out = infonce(pred, z, torch.tensor([3]), neg)
    # t=0: logits [2, (masked), 3]; t=1: all negatives are the positive -> loss 0, counted correct
    l0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(3)))
    assert out.loss.item() == pytest.approx(l0 / 2, rel=1e-6)
    assert out.accuracy.tolist() == [0.5]


def test_padding_queries_and_targets_excluded():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 4)
    pred = torch.randn(2, 6, 2, 4, requires_grad=True)
    lengths = torch.tensor([6, 3])
    neg = sample_negatives(lengths, 6, 5, "batch")
    out = infonce(pred, z, lengths, neg)
    out.loss.backward()
    # utterance 1 has 3 frames: step 1 valid for t<2, step 2 for t<1; nothing beyond
    assert out.counts.tolist() == [5 + 2, 4 + 1]
    assert torch.all(pred.grad[1, 2:] == 0) and torch.all(pred.grad[1, 1, 1] == 0)
    assert pred.grad[1, 0].abs().sum() > 0


@pytest.mark.parametrize("mode", ["utterance", "batch", "speaker"])
def test_negatives_only_valid_frames_of_the_group(mode):
    lengths = torch.tensor([50, 3, 0, 20, 7])
    frames = 50
    speakers = torch.tensor([0, 1, 1, 0, 2])
    neg = sample_negatives(lengths, frames, 64, mode, speakers if mode == "speaker" else None)
    assert neg.shape == (5, frames, 64)
    utt, t = neg // frames, neg % frames
    assert torch.all(t < lengths[utt]), "a negative points at padding"
    for b in range(5):
        if lengths[b] == 0:
            continue
        if mode == "utterance":
            assert torch.all(utt[b] == b)
        elif mode == "speaker":
            assert torch.all(speakers[utt[b]] == speakers[b])
            # and it does draw from the other utterances of that speaker
            assert set(utt[b].unique().tolist()) == set(torch.nonzero(speakers == speakers[b])[:, 0].tolist()) - {2}
    if mode == "batch":
        assert set(utt.unique().tolist()) == {0, 1, 3, 4}


def test_sampling_is_uniform_within_a_group():
    groups = torch.tensor([0, 0, 1, 1, 1, 1])
    idx = sample_in_groups(groups, torch.tensor([1]), 40000, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx[0], minlength=6).float() / 40000
    assert counts[:2].sum() == 0
    torch.testing.assert_close(counts[2:], torch.full((4,), 0.25), atol=0.01, rtol=0)


def test_infonce_vectorised_no_nan_with_empty_utterance():
    z = torch.randn(3, 8, 4)
    lengths = torch.tensor([8, 0, 5])
    neg = sample_negatives(lengths, 8, 4, "utterance")
    out = infonce(torch.randn(3, 8, 3, 4), z, lengths, neg)
    assert torch.isfinite(out.loss)


def test_no_valid_target_is_an_error():
    with pytest.raises(ValueError, match="no frame has a valid future target"):
        infonce(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 4), torch.tensor([1]), torch.zeros(1, 2, 1, dtype=torch.long))


@pytest.mark.parametrize("path", ["gathered", "dense"])
def test_infonce_equals_a_loop_over_frames_steps_and_negatives(path, monkeypatch):
    monkeypatch.setattr(nce, "DENSE_SCORES_RATIO", 0 if path == "gathered" else 1 << 20)
    g = torch.Generator().manual_seed(0)
    batch, frames, steps, negs, dim = 2, 9, 3, 4, 5
    pred = torch.randn(batch, frames, steps, dim, generator=g)
    z = torch.randn(batch, frames, dim, generator=g)
    lengths = torch.tensor([9, 6])
    neg = torch.randint(0, batch * frames, (batch, frames, negs), generator=g)
    neg[0, 0, 1] = 1  # a negative that is the positive of (0, 0, k=1): masked out
    out = infonce(pred, z, lengths, neg)
    flat = z.reshape(-1, dim)
    losses, right, counts = [], [0] * steps, [0] * steps
    for b in range(batch):
        for t in range(frames):
            for k in range(steps):
                target = t + k + 1
                if target >= lengths[b]:
                    continue
                pos_index = b * frames + target
                logits = [float(pred[b, t, k] @ flat[pos_index])]
                logits += [float(pred[b, t, k] @ flat[j]) if j != pos_index else -math.inf for j in neg[b, t].tolist()]
                top = max(logits)
                losses.append(-(logits[0] - top - math.log(sum(math.exp(v - top) for v in logits))))
                right[k] += logits[0] > max(logits[1:])
                counts[k] += 1
    assert out.loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert out.counts.tolist() == counts
    assert out.accuracy.tolist() == pytest.approx([r / c for r, c in zip(right, counts)])


def test_dense_scores_give_the_gathered_loss_accuracy_and_gradients(monkeypatch):
    """Many negatives from a small batch: infonce scores every frame in one matmul and picks each
    query's negatives; the loss, accuracy and gradients are those of the gathered negatives."""
    g = torch.Generator().manual_seed(3)
    batch, frames, steps, negs, dim = 3, 10, 3, 20, 8
    lengths = torch.tensor([10, 7, 4])
    neg = torch.cat([sample_negatives(lengths, frames, 5, "utterance", generator=g),
                     sample_negatives(lengths, frames, negs - 5, "batch", generator=g)], dim=-1)
    pred0 = torch.randn(batch, frames, steps, dim, generator=g)
    z0 = torch.randn(batch, frames, dim, generator=g)
    assert nce.dense_scores(batch, frames, steps, negs)  # the default rule takes the dense path here
    assert not nce.dense_scores(batch, frames, steps, 1)  # and gathers for few negatives
    results = {}
    for path, ratio in (("dense", nce.DENSE_SCORES_RATIO), ("gathered", 0)):
        monkeypatch.setattr(nce, "DENSE_SCORES_RATIO", ratio)
        pred, z = pred0.clone().requires_grad_(), z0.clone().requires_grad_()
        out = infonce(pred, z, lengths, neg)
        out.loss.backward()
        results[path] = (out, pred.grad, z.grad)
    (dense, dp, dz), (gathered, gp, gz) = results["dense"], results["gathered"]
    torch.testing.assert_close(dense.loss, gathered.loss, rtol=1e-6, atol=0)
    assert dense.accuracy.tolist() == gathered.accuracy.tolist()
    torch.testing.assert_close(dp, gp, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dz, gz, rtol=1e-5, atol=1e-7)
    assert dz[2, 4:].abs().max() == 0  # padding frames are never negatives nor positives
