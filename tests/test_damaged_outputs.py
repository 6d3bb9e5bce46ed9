"""Files an earlier step wrote and that were damaged since (a truncated label chunk, centroids or
feature file): a one-line ValueError naming the file and what to rerun, and `targets assign`
rewrites a damaged chunk when rerun (np.load's BadZipFile / EOFError are no ValueError)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import make_corpus

from speechssl.cli.main import main
from speechssl.data import read_manifest
from speechssl.downstream.precomputed import load_precomputed
from speechssl.targets import LabelFolder, assign_labels, load_kmeans
from speechssl.targets.labels import read_chunk

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    train = make_corpus(root / "c", n=6, seconds=(0.6, 1.0))
    assert main(["targets", "kmeans", "--features", "mfcc", "--train", str(train), "--k", "4",
                 "--sample-hours", "0.001", "--n-init", "1", "--out", str(root / "km")]) == 0
    return root, train


def _truncate(path, keep=60):
    path.write_bytes(path.read_bytes()[:keep])


def test_damaged_label_chunk_is_named_and_rewritten_by_assign(labelled, tmp_path):
    root, train = labelled
    out = tmp_path / "labels"
    assign_labels(root / "km", train, out, chunk_size=3)
    chunk = sorted((out / "chunks").iterdir())[0]
    good = read_chunk(chunk)["labels"]
    _truncate(chunk)
    with pytest.raises(ValueError, match=rf"{chunk.name}: unreadable label chunk \(BadZipFile"):
        LabelFolder(out)
    again = assign_labels(root / "km", train, out, chunk_size=3)
    assert again.labelled == 3 and again.skipped_chunks == 1
    assert np.array_equal(read_chunk(chunk)["labels"], good)


def test_damaged_centroids_are_named(labelled, tmp_path):
    root, _ = labelled
    shutil.copytree(root / "km", tmp_path / "km")
    _truncate(tmp_path / "km" / "centroids.npy")
    with pytest.raises(ValueError, match=r"centroids.npy: unreadable .*re-fit"):
        load_kmeans(tmp_path / "km")


def test_damaged_feature_file_is_named(labelled, tmp_path):
    _, train = labelled
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", "logmel", "--input", str(train), "--out", str(feats), "--no-progress"]) == 0
    records = read_manifest(train)
    victim = next(feats.rglob("*.npy"))
    _truncate(victim, 20)
    with pytest.raises(ValueError, match=r"in .*index.tsv: cannot read its features .*rerun `speechssl extract`"):
        load_precomputed(feats, records, lazy=False)
