"""speechssl targets: k-means on a bounded sample, resumable sharded assignment, provenance checks,
label alignment to the model's frames, the cluster report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import make_corpus

from speechssl.cli.main import main
from speechssl.data.manifest import read_manifest
from speechssl.features.base import build_frontend
from speechssl.targets import FrameTargets, LabelFolder, assign_labels, fit_kmeans, load_kmeans
from speechssl.targets.kmeans import nearest, sample_records
from speechssl.targets.report import label_agreement

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    train = make_corpus(root / "c", n=10, seconds=(0.6, 1.2))
    dev = make_corpus(root / "c", n=3, seconds=(0.6, 1.2), seed=1, name="dev")
    assert main(["targets", "kmeans", "--features", "mfcc", "--train", str(train), "--k", "6",
                 "--sample-hours", "0.001", "--n-init", "2", "--out", str(root / "km")]) == 0
    return root, train, dev


class FakeModel:
    """What FrameTargets needs of a model: target specs, frame shift and frame formula (20 ms frames)."""

    def __init__(self, classes=6, shift=160):
        self.specs, self.frame_shift = [(classes, shift)], 320

    def target_specs(self):
        return self.specs

    def num_frames(self, n):
        return torch.clamp(torch.div(n - 400, 320, rounding_mode="floor") + 1, min=0)


def test_kmeans_is_bounded_by_the_sample_and_records_provenance(fitted):
    root, train, _ = fitted
    meta, centroids = load_kmeans(root / "km")
    records = read_manifest(train)
    sample = sample_records(records, 0.001, 0)  # 3.6 s of audio: a few utterances, not all 10
    assert meta["sample"]["utterances"] == len(sample) < len(records)
    assert meta["k"] == 6 and centroids.shape == (6, 39) and meta["features"]["frame_shift"] == 160
    assert meta["features"]["features"] == "mfcc" and meta["features"]["layer"] == "features"
    assert len(meta["hash"]) == 16 and meta["train_manifest"]["sha256"]
    x = np.random.default_rng(0).normal(size=(50, 39)).astype(np.float32) * 10
    want = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest(x, centroids), want)
    # the folder is self-checking: changed centroids no longer match the hash
    bad = root / "km_bad"
    shutil.copytree(root / "km", bad)
    np.save(bad / "centroids.npy", centroids + 1)
    with pytest.raises(ValueError, match="does not match the hash"):
        load_kmeans(bad)


def test_assign_reports_progress_on_long_runs(fitted, tmp_path, caplog, monkeypatch):
    import speechssl.targets.assign as assign_module

    root, train, _ = fitted
    monkeypatch.setattr(assign_module, "PROGRESS_EVERY_SECONDS", 0.0)  # every chunk counts as "a while"
    caplog.set_level("INFO")
    assign_labels(root / "km", train, tmp_path / "labels", chunk_size=4)
    lines = [r.getMessage() for r in caplog.records if "chunks done" in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == [f"targets assign[rank 0]: {i}/3 chunks done" for i in (1, 2, 3)]
    assert "labelled 10 utterances" in lines[-1] and "chunks/s" in lines[-1] and "eta 0:00:00" in lines[-1]


def test_kmeans_reports_progress_while_encoding_the_sample(tmp_path, caplog, monkeypatch):
    import speechssl.targets.kmeans as kmeans_module

    train = make_corpus(tmp_path / "c", n=4, seconds=(1.0, 1.0), equal=True)
    monkeypatch.setattr(kmeans_module, "PROGRESS_EVERY_SECONDS", 0.0)
    caplog.set_level("INFO")
    fit_kmeans("mfcc", None, train, tmp_path / "km", k=2, n_init=1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kmeans (encoding the sample): ")]
    assert [line.split(" s of audio")[0] for line in lines] == [
        f"kmeans (encoding the sample): {s}.0/4.0" for s in (1, 2, 3, 4)]
    assert "audio-s/s" in lines[-1] and "eta 0:00:00" in lines[-1]


def test_kmeans_leaves_out_an_unreadable_sampled_file(tmp_path, caplog):
    # one bad file in the sample used to stop the fit; assign still refuses it (labels must cover all)
    train = make_corpus(tmp_path / "c", n=6, seconds=(0.6, 1.0))
    (tmp_path / "c" / "train_002.wav").write_bytes(b"not audio")
    caplog.set_level("WARNING")
    meta = fit_kmeans("mfcc", None, train, tmp_path / "km", k=3, sample_hours=1.0, n_init=1)
    assert meta["sample"]["unreadable"] == ["train_002"] and meta["sample"]["utterances"] == 6
    assert "kmeans: skipping train_002" in caplog.text and "train_002.wav" in caplog.text
    with pytest.raises(ValueError, match=r"train_002\.wav: .*needs labels: leave it out .*--check-audio"):
        assign_labels(tmp_path / "km", train, tmp_path / "labels")


def test_assign_labels_every_frame_resumes_and_shards(fitted, tmp_path):
    root, train, dev = fitted
    out = tmp_path / "labels"
    summary = assign_labels(root / "km", train, out, chunk_size=4)
    assert summary.labelled == 10 and summary.skipped_chunks == 0 and summary.index.is_file()
    folder = LabelFolder(out)
    mfcc = build_frontend({"name": "mfcc"}).eval()
    _, centroids = load_kmeans(root / "km")
    for rec in read_manifest(train)[:3]:
        from speechssl.audio import load_audio

        wav = load_audio(rec["path"])
        feats, _ = mfcc(wav[None], torch.tensor([wav.numel()]))
        assert np.array_equal(folder.labels[rec["id"]], nearest(feats[0].numpy(), centroids))
        assert folder.num_samples[rec["id"]] == rec["num_samples"]
    # resume: a lost chunk is redone, the others are skipped
    chunks = sorted((out / "chunks").iterdir())
    assert len(chunks) == 3
    before = chunks[1].read_bytes()
    chunks[1].unlink()
    again = assign_labels(root / "km", train, out, chunk_size=4)
    assert again.labelled == 4 and again.skipped_chunks == 2
    assert np.array_equal(np.load(chunks[1])["labels"], np.load(__import__("io").BytesIO(before))["labels"])
    # two ranks (as under torchrun): rank 1 does its chunks, rank 0 its own and then merges the index
    sharded = tmp_path / "sharded"
    assert assign_labels(root / "km", train, sharded, chunk_size=4, rank=1, world_size=2).index is None
    merged = assign_labels(root / "km", train, sharded, chunk_size=4, rank=0, world_size=2)
    assert merged.labelled == 6 and merged.index.is_file()  # chunks 0 and 2
    shard_folder = LabelFolder(sharded)
    assert all(np.array_equal(shard_folder.labels[u], folder.labels[u]) for u in folder.labels)
    # validation labels go into the same folder, from the same k-means
    assign_labels(root / "km", dev, out)
    index = json.loads((out / "index.json").read_text())
    assert len(index["manifests"]) == 2 and len(LabelFolder(out).labels) == 13


def test_another_kmeans_into_the_same_folder_is_refused(fitted, tmp_path):
    root, train, dev = fitted
    out = tmp_path / "labels"
    assign_labels(root / "km", train, out)
    fit_kmeans("mfcc", None, train, tmp_path / "km2", k=5, sample_hours=0.001, n_init=1, seed=3)
    with pytest.raises(ValueError, match="must be labelled by the same k-means"):
        assign_labels(tmp_path / "km2", dev, out)


def test_frame_targets_checks_and_alignment(fitted, tmp_path):
    root, train, dev = fitted
    out = tmp_path / "labels"
    assign_labels(root / "km", train, out)
    records = read_manifest(train)
    targets = FrameTargets.open([out], FakeModel())
    targets.check(records, "train.jsonl")
    utt = records[0]["id"]
    labels = LabelFolder(out).labels[utt]
    crop = targets.crop(utt, 640, 3200)  # 2 model frames in, 0.2 s: 100 Hz labels 4, 6, 8, ...
    assert crop.shape[1] == 1 and np.array_equal(crop[:, 0], labels[4::2][: len(crop)]) and len(crop) >= 10
    with pytest.raises(ValueError, match="not a multiple of the model frame shift"):
        targets.crop(utt, 100, 3200)
    with pytest.raises(ValueError, match=r"k=6 clusters but model.num_classes\[0\] = 100"):
        FrameTargets.open([out], FakeModel(classes=100))
    with pytest.raises(ValueError, match=r"labels at 100 Hz .* model.label_frame_shifts\[0\] = 320 \(50 Hz\)"):
        FrameTargets.open([out], FakeModel(shift=320))
    with pytest.raises(ValueError, match=r"utterance 'dev_000' has no labels in .*another corpus"):
        targets.check(read_manifest(dev), "dev.jsonl")
    changed = [dict(records[0], num_samples=records[0]["num_samples"] - 1600)]
    with pytest.raises(ValueError, match=rf"utterance '{utt}' has \d+ samples but its labels .* computed on"):
        targets.check(changed, "train.jsonl")
    # labels written for another frame formula: the count does not fit the model's frames
    twice = FakeModel()
    twice.num_frames = lambda n: 2 * FakeModel().num_frames(n)
    with pytest.raises(ValueError, match=rf"utterance '{utt}' has \d+ labels at 100 Hz .* makes \d+ frames at 50 Hz"):
        FrameTargets(targets.folders, 320, twice.num_frames).check(records, "train.jsonl")
    with pytest.raises(FileNotFoundError, match="no index.json"):
        LabelFolder(tmp_path)


def test_cluster_report_and_cli(fitted, tmp_path):
    root, train, _ = fitted
    out = tmp_path / "labels"
    assert main(["targets", "assign", "--kmeans", str(root / "km"), "--input", str(train), "--out", str(out),
                 "--report-labels", "speaker"]) == 0
    report_json = next(out.glob("report-*.json"))
    report = json.loads(report_json.read_text())
    assert report["k"] == 6 and sum(report["cluster_counts"]) == report["frames"] > 0
    assert 0 < report["entropy_bits"] <= np.log2(6) + 1e-9 and set(report["labels"]) == {"speaker"}
    assert 0 <= report["labels"]["speaker"]["pnmi"] <= 1
    assert report_json.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # purity / PNMI on known cases
    same = label_agreement(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2]), 3)
    assert same["cluster_purity"] == same["label_purity"] == pytest.approx(1.0) and same["pnmi"] == pytest.approx(1.0)
    indep = label_agreement(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), 2)
    assert indep["pnmi"] == pytest.approx(0.0, abs=1e-12) and indep["cluster_purity"] == pytest.approx(0.5)
