"""speechssl.data: JSONL manifests, folder scanning, import/export, splits, datasets and batching.

- :mod:`speechssl.data.manifest`: ``read_manifest``, ``write_manifest``, ``record_duration`` ...
- :mod:`speechssl.data.prepare`: ``prepare_folder`` (``speechssl prepare DIR``).
- :mod:`speechssl.data.formats`: fairseq wav2vec TSV and Kaldi data-dir import/export.
- :mod:`speechssl.data.split`: ``split_records``, ``kfold_records``.
- :mod:`speechssl.data.dataset`: ``AudioDataset``, ``collate_audio``, ``make_loader``.
- :mod:`speechssl.data.sampler`: ``SecondsBatchSampler``.

The names below are imported from their submodule on first use (:mod:`speechssl.lazy`; the
``TYPE_CHECKING`` imports show them to IDEs and type checkers), so
importing a light submodule such as :mod:`speechssl.data.prepare_defaults` loads no torch.
"""

from typing import TYPE_CHECKING

from speechssl.lazy import lazy_exports

if TYPE_CHECKING:  # seen by IDEs and type checkers only (`X as X`: a re-export); at run time __getattr__ imports
    from speechssl.data.dataset import AudioDataset as AudioDataset
    from speechssl.data.dataset import AudioLoader as AudioLoader
    from speechssl.data.dataset import collate_audio as collate_audio
    from speechssl.data.dataset import make_loader as make_loader
    from speechssl.data.dataset import padded_seconds as padded_seconds
    from speechssl.data.formats import export_manifest as export_manifest
    from speechssl.data.formats import import_manifest as import_manifest
    from speechssl.data.formats import read_kaldi_dir as read_kaldi_dir
    from speechssl.data.formats import read_tsv as read_tsv
    from speechssl.data.formats import write_kaldi_dir as write_kaldi_dir
    from speechssl.data.formats import write_tsv as write_tsv
    from speechssl.data.manifest import ManifestError as ManifestError
    from speechssl.data.manifest import format_summary as format_summary
    from speechssl.data.manifest import group_records as group_records
    from speechssl.data.manifest import iter_manifest as iter_manifest
    from speechssl.data.manifest import label_counts as label_counts
    from speechssl.data.manifest import label_fields as label_fields
    from speechssl.data.manifest import manifest_summary as manifest_summary
    from speechssl.data.manifest import merge_manifests as merge_manifests
    from speechssl.data.manifest import read_manifest as read_manifest
    from speechssl.data.manifest import record_duration as record_duration
    from speechssl.data.manifest import total_hours as total_hours
    from speechssl.data.manifest import validate_record as validate_record
    from speechssl.data.manifest import write_manifest as write_manifest
    from speechssl.data.prepare import PrepareError as PrepareError
    from speechssl.data.prepare import PrepareReport as PrepareReport
    from speechssl.data.prepare import prepare_folder as prepare_folder
    from speechssl.data.sampler import SecondsBatchSampler as SecondsBatchSampler
    from speechssl.data.split import kfold_records as kfold_records
    from speechssl.data.split import parse_fractions as parse_fractions
    from speechssl.data.split import split_manifest as split_manifest
    from speechssl.data.split import split_records as split_records

# submodule -> the public names it defines
_EXPORTS = {
    "dataset": ["AudioDataset", "AudioLoader", "collate_audio", "make_loader", "padded_seconds"],
    "formats": ["export_manifest", "import_manifest", "read_kaldi_dir", "read_tsv", "write_kaldi_dir", "write_tsv"],
    "manifest": ["ManifestError", "format_summary", "group_records", "iter_manifest", "label_counts", "label_fields",
                 "manifest_summary", "merge_manifests", "read_manifest", "record_duration", "total_hours",
                 "validate_record", "write_manifest"],
    "prepare": ["PrepareError", "PrepareReport", "prepare_folder"],
    "sampler": ["SecondsBatchSampler"],
    "split": ["kfold_records", "parse_fractions", "split_manifest", "split_records"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
