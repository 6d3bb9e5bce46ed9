"""VoxCeleb1 (Nagrani et al. 2017) in the SUPERB speaker-identification setup.

Layout read::

    CORPUS/iden_split.txt                       lines "<1|2|3> id10001/1zcIwhmdeo4/00001.wav"
    CORPUS/{wav,vox1_dev_wav/wav,vox1_test_wav/wav}/id10001/1zcIwhmdeo4/00001.wav

Split codes 1, 2, 3 are train, dev and test (s3prl ``downstream/voxceleb1``). Writes
``OUT/{train,dev,test}.jsonl`` with labels ``speaker`` and ``video``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from speechssl.corpora.common import records_from_files, require_dir
from speechssl.data.manifest import write_manifest
from speechssl.data.prepare import PrepareReport

log = logging.getLogger(__name__)

SPLITS = {"1": "train", "2": "dev", "3": "test"}
_WAV_ROOTS = ("wav", "vox1_dev_wav/wav", "vox1_test_wav/wav", "dev/wav", "test/wav")


def _find(corpus_dir: Path, rel: str) -> Path:
    for sub in _WAV_ROOTS:
        candidate = corpus_dir / sub / rel
        if candidate.exists():
            return candidate
    return corpus_dir / "wav" / rel  # reported as unreadable by records_from_files


def prepare_voxceleb1(
    corpus_dir: str | Path, out_dir: str | Path, split_file: str | Path | None = None, min_seconds: float = 0.0
) -> dict[str, Path]:
    """Write train/dev/test manifests from ``iden_split.txt``; returns ``{split: path}``."""
    corpus_dir = require_dir(corpus_dir, "VoxCeleb1 corpus")
    split_path = Path(split_file) if split_file else corpus_dir / "iden_split.txt"
    if not split_path.is_file():
        raise FileNotFoundError(f"VoxCeleb1 split file not found: {split_path} (pass split_file=...)")
    items: dict[str, list] = {name: [] for name in SPLITS.values()}
    for lineno, line in enumerate(split_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLITS:
            raise ValueError(f"{split_path}:{lineno}: expected '<1|2|3> <speaker>/<video>/<file>.wav', got {line!r}")
        code, rel = parts
        rel_parts = Path(rel).parts
        if len(rel_parts) != 3:
            raise ValueError(f"{split_path}:{lineno}: expected <speaker>/<video>/<file>.wav, got {rel!r}")
        speaker, video, name = rel_parts
        utt_id = f"{speaker}-{video}-{Path(name).stem}"
        items[SPLITS[code]].append((utt_id, _find(corpus_dir, rel), {"speaker": speaker, "video": video}))
    out_dir = Path(out_dir)
    written = {}
    report = PrepareReport(folder=str(corpus_dir))
    for split, split_items in items.items():
        records, report = records_from_files(split_items, min_seconds=min_seconds, report=report)
        if records:
            written[split] = out_dir / f"{split}.jsonl"
            write_manifest(records, written[split])
    print(f"voxceleb1: {report.summary()}")
    if "train" not in written:
        raise ValueError(f"no usable VoxCeleb1 training audio listed in {split_path}")
    return written
