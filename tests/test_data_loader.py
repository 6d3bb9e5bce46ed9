"""Seconds-budget sampler, resume, ranks, dataset crops and collate."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.audio import AudioError
from speechssl.data import (
    AudioDataset,
    SecondsBatchSampler,
    collate_audio,
    make_loader,
    padded_seconds,
)


def _durations(n: int = 300, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).uniform(0.3, 6.0, n).round(3).tolist()


def test_budget_respected_and_every_item_once():
    d = _durations()
    s = SecondsBatchSampler(d, max_batch_seconds=20.0, seed=1, pool_size=64)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(d)))
    assert all(padded_seconds([d[i] for i in b]) <= 20.0 for b in batches)
    assert len(batches) == len(s)
    # length bucketing keeps padding small compared to random batches
    pad = sum(padded_seconds([d[i] for i in b]) for b in batches) - sum(d)
    assert pad / sum(d) < 0.25


def test_deterministic_per_seed_and_epoch():
    d = _durations()
    a = SecondsBatchSampler(d, 20.0, seed=1, pool_size=64)
    b = SecondsBatchSampler(d, 20.0, seed=1, pool_size=64)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    e1 = list(a)
    assert e1 == list(b)
    a.set_epoch(0)
    assert e1 != list(a)
    assert list(SecondsBatchSampler(d, 20.0, seed=2, pool_size=64)) != list(a)
    sorted_batches = list(SecondsBatchSampler(d, 20.0, shuffle=False))
    assert sorted_batches == list(SecondsBatchSampler(d, 20.0, shuffle=False))
    flat = [d[i] for b in sorted_batches for i in b]
    assert flat == sorted(d, reverse=True)


def test_long_item_is_its_own_batch_and_max_batch_size():
    s = SecondsBatchSampler([1.0] * 10 + [50.0], 20.0, shuffle=False, max_batch_size=4)
    batches = list(s)
    assert batches[0] == [10]
    assert [len(b) for b in batches[1:]] == [4, 4, 2]


def test_resume_from_state_dict_continues_with_the_same_batches():
    d = _durations()
    s = SecondsBatchSampler(d, 20.0, seed=5, pool_size=64)
    s.set_epoch(3)
    it = iter(s)
    seen = [next(it) for _ in range(7)]
    state = s.state_dict()
    rest = list(it)
    assert state["epoch"] == 3 and state["consumed"] == 7
    fresh = SecondsBatchSampler(d, 20.0, seed=5, pool_size=64)
    fresh.load_state_dict(state)
    fresh.set_epoch(3)  # the training loop sets the epoch again: still mid-epoch
    assert list(fresh) == rest
    assert seen + rest == fresh.rank_batches(3)
    fresh.set_epoch(4)
    assert len(list(fresh)) == len(fresh)  # a new epoch starts at its beginning
    with pytest.raises(ValueError, match="max_batch_seconds: saved 20.0 now 30.0"):
        SecondsBatchSampler(d, 30.0, seed=5, pool_size=64).load_state_dict(state, strict=True)
    changed = SecondsBatchSampler(d, 30.0, seed=5, pool_size=64)
    changed.load_state_dict(state)  # other batching: the saved epoch restarts, with a warning
    assert changed.epoch == 3 and list(changed) == changed.rank_batches(3)


def test_resume_with_another_world_size_skips_seen_global_batches():
    d = _durations()
    two = [SecondsBatchSampler(d, 20.0, seed=5, num_replicas=2, rank=r, pool_size=64) for r in range(2)]
    for s in two:
        it = iter(s)
        for _ in range(4):
            next(it)
    one = SecondsBatchSampler(d, 20.0, seed=5, pool_size=64)
    one.load_state_dict(two[0].state_dict())
    assert list(one) == one.global_batches()[8:]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_with_equal_counts(world):
    d = _durations(101)
    ranks = [
        list(SecondsBatchSampler(d, 15.0, seed=0, num_replicas=world, rank=r, pool_size=32))
        for r in range(world)
    ]
    counts = {len(r) for r in ranks}
    assert len(counts) == 1
    full = SecondsBatchSampler(d, 15.0, seed=0, pool_size=32).global_batches()
    flat = [tuple(b) for r in ranks for b in r]
    assert set(flat) == {tuple(b) for b in full}  # together they cover every batch
    assert len(flat) - len(full) < world  # only padding repeats
    dropped = [
        list(SecondsBatchSampler(d, 15.0, num_replicas=world, rank=r, drop_last=True, pool_size=32))
        for r in range(world)
    ]
    assert len({len(r) for r in dropped}) == 1
    assert len({tuple(b) for r in dropped for b in r}) == sum(len(r) for r in dropped)
    tiny = [list(SecondsBatchSampler([1.0], 15.0, num_replicas=world, rank=r)) for r in range(world)]
    assert tiny == [[[0]]] * world  # fewer batches than ranks: repeated so no rank waits
    with pytest.raises(ValueError, match="every rank would get none"):
        len(SecondsBatchSampler([1.0], 15.0, num_replicas=world, rank=0, drop_last=True))


def _make_corpus(tmp_path, n=12):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        sr = 16000 if i % 3 else 8000
        seconds = 0.2 + 0.3 * i
        x = (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)
        path = tmp_path / f"u{i}.wav"
        sf.write(path, x, sr, subtype="FLOAT")
        recs.append(
            {
                "id": f"u{i}",
                "path": str(path),
                "num_samples": len(x),
                "sample_rate": sr,
                "speaker": f"s{i % 2}",
            }
        )
    return recs


@pytest.mark.parametrize("world", [2, 3])
def test_uneven_ranks_see_every_batch_exactly_once(world):
    d = _durations(101)
    full = SecondsBatchSampler(d, 15.0, shuffle=False).global_batches()
    ranks = [list(SecondsBatchSampler(d, 15.0, shuffle=False, num_replicas=world, rank=r, even_ranks=False))
             for r in range(world)]
    flat = sorted(tuple(b) for r in ranks for b in r)
    assert flat == sorted(tuple(b) for b in full)  # no repeats, nothing missing
    assert max(map(len, ranks)) - min(map(len, ranks)) <= 1
    # one batch, three ranks: two ranks get none, and their loader yields nothing
    lonely = [list(SecondsBatchSampler([1.0], 15.0, num_replicas=3, rank=r, even_ranks=False)) for r in range(3)]
    assert [len(r) for r in lonely] == [1, 0, 0]


def test_dataset_drops_short_crops_deterministically(tmp_path):
    recs = _make_corpus(tmp_path)
    ds = AudioDataset(recs, max_seconds=1.0, min_seconds=0.4, seed=7, label_fields=["speaker"])
    assert ds.dropped == {"too_short": 1} and len(ds) == 11
    assert max(ds.durations) == 1.0
    item = ds[10]
    assert item["wav"].dtype == torch.float32 and item["wav"].numel() == 16000 and item["speaker"] == "s1"
    again = AudioDataset(recs, max_seconds=1.0, min_seconds=0.4, seed=7, label_fields=["speaker"])
    assert torch.equal(again[10]["wav"], item["wav"])  # same (seed, epoch, index) -> same crop
    again.set_epoch(1)
    assert not torch.equal(again[10]["wav"], item["wav"])
    other_seed = AudioDataset(recs, max_seconds=1.0, min_seconds=0.4, seed=8)
    assert other_seed.crop_window(10) != ds.crop_window(10)
    centre = AudioDataset(recs, max_seconds=1.0, random_crop=False)
    start, dur = centre.crop_window(11)
    assert dur == 1.0 and start == pytest.approx((recs[11]["num_samples"] / 16000 - 1.0) / 2, abs=1e-4)
    # 8 kHz file resampled to 16 kHz
    assert ds[2]["wav"].numel() == pytest.approx(16000 * ds.durations[2], abs=2)
    with pytest.raises(KeyError, match="no label field"):
        AudioDataset(recs, label_fields=["emotion"])


def test_dataset_honours_segments(tmp_path):
    x = np.arange(32000, dtype=np.float32) / 32000
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    rec = {
        "id": "seg",
        "path": str(tmp_path / "a.wav"),
        "num_samples": 32000,
        "sample_rate": 16000,
        "start": 0.5,
        "duration": 1.0,
    }
    ds = AudioDataset([rec], max_seconds=0.5, random_crop=False)
    assert ds.durations == [0.5]
    np.testing.assert_allclose(ds[0]["wav"].numpy(), x[12000:20000])
    whole = AudioDataset([rec])
    np.testing.assert_allclose(whole[0]["wav"].numpy(), x[8000:24000])


def test_collate_pads_and_keeps_labels():
    items = [
        {"id": "a", "wav": torch.ones(3), "speaker": "x"},
        {"id": "b", "wav": torch.ones(5), "speaker": "y"},
    ]
    batch = collate_audio(items)
    assert batch["wavs"].shape == (2, 5) and batch["wavs"].dtype == torch.float32
    assert batch["lengths"].tolist() == [3, 5] and batch["ids"] == ["a", "b"]
    assert batch["wavs"][0, 3:].abs().sum() == 0 and batch["speaker"] == ["x", "y"]
    with pytest.raises(ValueError, match="empty batch"):
        collate_audio([])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_and_bad_file(tmp_path, workers):
    recs = _make_corpus(tmp_path)
    kw = dict(max_batch_seconds=2.5, max_seconds=1.2, seed=3, num_workers=workers, pool_size=4)
    loader = make_loader(recs, **kw)
    epoch0 = [b["ids"] for b in loader]
    assert loader.epoch == 1 and sorted(i for b in epoch0 for i in b) == sorted(r["id"] for r in recs)
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    state = loader.state_dict()
    rest = [b for b in it]
    assert state["epoch"] == 1 and state["consumed"] == 2
    resumed = make_loader(recs, **kw)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert [b["ids"] for b in again] == [b["ids"] for b in rest]
    assert all(torch.equal(a["wavs"], b["wavs"]) for a, b in zip(again, rest))
    assert len(first) + len(rest) == len(loader.sampler.rank_batches(1))

    (tmp_path / "u5.wav").write_bytes(b"not audio at all")
    broken = make_loader(recs, **kw)
    delivered, failed = 0, []
    it = iter(broken)
    while True:  # the Trainer's pattern: skip the failing batch, carry on
        try:
            next(it)
            delivered += 1
        except StopIteration:
            break
        except AudioError as exc:
            failed.append(exc.path)
            assert broken.state_dict()["consumed"] == delivered + 1
    assert failed == [str(tmp_path / "u5.wav")]
    assert delivered + 1 == len(broken.sampler.rank_batches(0))


def test_loader_state_saved_at_epoch_end_starts_next_epoch(tmp_path):
    recs = _make_corpus(tmp_path, n=6)
    loader = make_loader(recs, max_batch_seconds=2.5, max_seconds=1.0, seed=1, pool_size=3)
    it = iter(loader)
    n = len(loader)
    for _ in range(n):
        next(it)
    state = loader.state_dict()  # every batch delivered, StopIteration not reached yet
    assert state["epoch"] == 0 and state["consumed"] == n
    resumed = make_loader(recs, max_batch_seconds=2.5, max_seconds=1.0, seed=1, pool_size=3)
    resumed.load_state_dict(state)
    ids = [b["ids"] for b in resumed]
    assert resumed.epoch == 2  # epoch 1 was run in full
    loader2 = make_loader(recs, max_batch_seconds=2.5, max_seconds=1.0, seed=1, pool_size=3)
    loader2.set_epoch(1)
    assert ids == [b["ids"] for b in loader2]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_unreadable_leaves_a_bad_file_out_of_its_batch(tmp_path, workers):
    recs = _make_corpus(tmp_path, n=4)
    (tmp_path / "u1.wav").write_bytes(b"not audio at all")
    loader = make_loader(recs, 10.0, shuffle=False, skip_unreadable=True, num_workers=workers)
    (batch,) = list(loader)
    assert sorted(batch["ids"]) == ["u0", "u2", "u3"] and batch["wavs"].shape[0] == 3
    assert len(batch["load_errors"]) == 1 and "u1.wav" in batch["load_errors"][0]
    # a batch of bad files only is lost as a whole, as without skip_unreadable
    only_bad = make_loader([recs[1]], 10.0, shuffle=False, skip_unreadable=True)
    with pytest.raises(AudioError, match="u1.wav"):
        list(only_bad)
