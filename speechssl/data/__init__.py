"""speechssl.data: JSONL manifests, folder scanning, import/export, splits, datasets and batching.

- :mod:`speechssl.data.manifest`: ``read_manifest``, ``write_manifest``, ``record_duration`` ...
- :mod:`speechssl.data.prepare`: ``prepare_folder`` (``speechssl prepare DIR``).
- :mod:`speechssl.data.formats`: fairseq wav2vec TSV and Kaldi data-dir import/export.
- :mod:`speechssl.data.split`: ``split_records``, ``kfold_records``.
- :mod:`speechssl.data.dataset`: ``AudioDataset``, ``collate_audio``, ``make_loader``.
- :mod:`speechssl.data.sampler`: ``SecondsBatchSampler``.

The names below are imported from their submodule on first use (:mod:`speechssl.lazy`), so
importing a light submodule such as :mod:`speechssl.data.prepare_defaults` loads no torch.
"""

from speechssl.lazy import lazy_exports

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
