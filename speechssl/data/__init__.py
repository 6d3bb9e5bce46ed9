"""speechssl.data: JSONL manifests, folder scanning, import/export, splits, datasets and batching.

- :mod:`speechssl.data.manifest`: ``read_manifest``, ``write_manifest``, ``record_duration`` ...
- :mod:`speechssl.data.prepare`: ``prepare_folder`` (``speechssl prepare DIR``).
- :mod:`speechssl.data.formats`: fairseq wav2vec TSV and Kaldi data-dir import/export.
- :mod:`speechssl.data.split`: ``split_records``, ``kfold_records``.
- :mod:`speechssl.data.dataset`: ``AudioDataset``, ``collate_audio``, ``make_loader``.
- :mod:`speechssl.data.sampler`: ``SecondsBatchSampler``.
"""

from speechssl.data.dataset import AudioDataset, AudioLoader, collate_audio, make_loader, padded_seconds
from speechssl.data.formats import (
    export_manifest,
    import_manifest,
    read_kaldi_dir,
    read_tsv,
    write_kaldi_dir,
    write_tsv,
)
from speechssl.data.manifest import (
    ManifestError,
    format_summary,
    group_records,
    iter_manifest,
    label_counts,
    label_fields,
    manifest_summary,
    merge_manifests,
    read_manifest,
    record_duration,
    total_hours,
    validate_record,
    write_manifest,
)
from speechssl.data.prepare import PrepareError, PrepareReport, prepare_folder
from speechssl.data.sampler import SecondsBatchSampler
from speechssl.data.split import kfold_records, parse_fractions, split_manifest, split_records

__all__ = [
    "AudioDataset",
    "AudioLoader",
    "ManifestError",
    "PrepareError",
    "PrepareReport",
    "SecondsBatchSampler",
    "collate_audio",
    "export_manifest",
    "format_summary",
    "group_records",
    "import_manifest",
    "iter_manifest",
    "kfold_records",
    "label_counts",
    "label_fields",
    "make_loader",
    "manifest_summary",
    "merge_manifests",
    "padded_seconds",
    "parse_fractions",
    "prepare_folder",
    "read_kaldi_dir",
    "read_manifest",
    "read_tsv",
    "record_duration",
    "split_manifest",
    "split_records",
    "total_hours",
    "validate_record",
    "write_kaldi_dir",
    "write_manifest",
    "write_tsv",
]
