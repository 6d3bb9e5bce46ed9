"""IEMOCAP (Busso et al. 2008) in the SUPERB emotion-recognition setup.

Layout read (the corpus's own release)::

    CORPUS/[IEMOCAP_full_release/]Session<k>/sentences/wav/<dialog>/<utt>.wav
    CORPUS/[IEMOCAP_full_release/]Session<k>/dialog/EmoEvaluation/<dialog>.txt

Label lines in EmoEvaluation look like
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``.
As in SUPERB (s3prl ``downstream/emotion``): four classes neutral, happy (with excited merged
in), angry, sad; every other label dropped; fold k tests on Session k and trains on the rest.

Writes ``OUT/all.jsonl`` (labels ``emotion``, ``session``, ``speaker``, ``gender``) and
``OUT/fold<k>/{train,test}.jsonl`` for k = 1..5 (for the sessions present).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from speechssl.corpora.common import records_from_files, require_dir
from speechssl.data.manifest import write_manifest

log = logging.getLogger(__name__)

EMOTION_MAP = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\d\d[MF]_\S+)\s+(\w+)\s+\[")
_UTT = re.compile(r"^Ses(\d\d)([MF])_.*_([MF])\d+$")


def _root(corpus_dir: Path) -> Path:
    inner = corpus_dir / "IEMOCAP_full_release"
    return inner if inner.is_dir() else corpus_dir


def read_emo_evaluation(path: Path) -> dict[str, str]:
    """``{utterance id: raw 3-letter label}`` from one EmoEvaluation file."""
    labels = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            labels[m.group(1)] = m.group(2)
    return labels


def prepare_iemocap(corpus_dir: str | Path, out_dir: str | Path, min_seconds: float = 0.0) -> dict[str, Path]:
    """Write ``all.jsonl`` and per-fold train/test manifests; returns ``{name: path}``. Safe to re-run."""
    root = _root(require_dir(corpus_dir, "IEMOCAP corpus"))
    out_dir = Path(out_dir)
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise FileNotFoundError(f"no Session1..Session5 folders under {root}")
    items, raw_counts = [], Counter()
    for session_dir in sessions:
        session = session_dir.name  # "Session1"
        eval_files = sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt"))
        if not eval_files:
            raise FileNotFoundError(f"{session_dir}/dialog/EmoEvaluation has no label files")
        for eval_file in eval_files:
            dialog = eval_file.stem
            for utt, raw in sorted(read_emo_evaluation(eval_file).items()):
                raw_counts[raw] += 1
                if raw not in EMOTION_MAP:
                    continue
                m = _UTT.match(utt)
                gender = m.group(3) if m else "?"
                wav = session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"
                labels = {
                    "emotion": EMOTION_MAP[raw],
                    "session": session,
                    "speaker": f"{utt[:5]}{gender}",
                    "gender": gender,
                }
                items.append((utt, wav, labels))
    records, report = records_from_files(items, min_seconds=min_seconds, name="iemocap")
    print(f"iemocap: {report.summary()}\nraw labels {dict(sorted(raw_counts.items()))} -> 4 classes")
    if not records:
        raise ValueError(f"no usable IEMOCAP utterances under {root}")
    written = {"all": out_dir / "all.jsonl"}
    write_manifest(records, written["all"])
    present = sorted({r["session"] for r in records})
    for session in present:
        k = session.removeprefix("Session")
        train = [r for r in records if r["session"] != session]
        test = [r for r in records if r["session"] == session]
        if not train:
            continue
        for split, recs in (("train", train), ("test", test)):
            written[f"fold{k}/{split}"] = out_dir / f"fold{k}" / f"{split}.jsonl"
            write_manifest(recs, written[f"fold{k}/{split}"])
    return written
