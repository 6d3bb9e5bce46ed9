"""fairseq TSV export: the root line is the folder given (fairseq's convention) and ids survive a round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main
from speechssl.data import ManifestError, read_manifest, write_manifest
from speechssl.data.formats import read_tsv, write_tsv


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """A corpus laid out like ``speechssl synth``: OUT/manifest.jsonl, OUT/wavs/<speaker>/<id>.wav,
    ids that are not derived from the paths."""
    out = tmp_path / "synth"
    records = []
    for n in range(12):
        spk = f"spk{n % 3}"
        utt = f"utt{n:03d}"
        wav = out / "wavs" / spk / f"{utt}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, np.full(800 + n, 0.1, dtype=np.float32), 16000, subtype="PCM_16")
        records.append({"id": utt, "path": str(wav), "num_samples": 800 + n, "sample_rate": 16000})
    write_manifest(records, out / "manifest.jsonl")
    return out


def test_export_root_is_the_manifest_folder_and_ids_round_trip(corpus, tmp_path):
    tsv = tmp_path / "fairseq" / "train.tsv"
    tsv.parent.mkdir()
    assert main(["manifest", "export", "--to", "tsv", str(corpus / "manifest.jsonl"), "--out", str(tsv)]) == 0
    lines = tsv.read_text().splitlines()
    # fairseq's wav2vec_manifest.py writes the corpus folder it was given, not the deepest shared one.
    assert lines[0] == str(corpus) and lines[1] == "wavs/spk0/utt000.wav\t800"
    for line in lines[1:]:  # what fairseq's FileAudioDataset opens: root / relative path
        assert (Path(lines[0]) / line.split("\t")[0]).is_file()
    back = tmp_path / "back.jsonl"
    assert main(["manifest", "import", "--from", "tsv", str(tsv), "--out", str(back)]) == 0
    original = read_manifest(corpus / "manifest.jsonl")
    assert [(r["id"], r["path"], r["num_samples"]) for r in read_manifest(back)] == [
        (r["id"], r["path"], r["num_samples"]) for r in original
    ]


def test_given_root_is_written_as_given(corpus, tmp_path):
    records = read_manifest(corpus / "manifest.jsonl")
    tsv = write_tsv(records, tmp_path / "t.tsv", root=tmp_path)
    lines = tsv.read_text().splitlines()
    assert lines[0] == str(tmp_path) and lines[1] == "synth/wavs/spk0/utt000.wav\t800"
    assert [r["id"] for r in read_tsv(tsv)] == [r["id"] for r in records]
    # Without a manifest folder holding the files, the shared folder of the files is the default.
    lines = write_tsv(records, tmp_path / "u.tsv").read_text().splitlines()
    assert lines[0] == str(corpus / "wavs") and [r["id"] for r in read_tsv(tmp_path / "u.tsv")] == [
        r["id"] for r in records
    ]


def test_tsv_without_ids_file_and_stale_ids_file(corpus, tmp_path):
    records = read_manifest(corpus / "manifest.jsonl")
    tsv = write_tsv(records, tmp_path / "t.tsv", root=corpus)
    ids_file = tmp_path / "t.ids"
    assert ids_file.read_text().splitlines()[0] == "utt000\twavs/spk0/utt000.wav"
    ids_file.unlink()  # a TSV written by fairseq itself: ids come from the paths
    assert read_tsv(tsv)[0]["id"] == "wavs_spk0_utt000"
    write_tsv(records[:3], tmp_path / "other.tsv", root=corpus)
    (tmp_path / "other.ids").rename(ids_file)  # an ids file that belongs to another TSV
    with pytest.raises(ManifestError, match=r"t\.ids: has 3 ids but the TSV has 12 entries"):
        read_tsv(tsv)
    rows = [f"x{n}\twavs/spk{n % 3}/utt{n:03d}.wav" for n in range(12)]
    rows[4] = "x4\twavs/spk0/elsewhere.wav"
    ids_file.write_text("\n".join(rows) + "\n")
    with pytest.raises(ManifestError, match=r"t\.ids:5: path 'wavs/spk0/elsewhere.wav' differs"):
        read_tsv(tsv)
