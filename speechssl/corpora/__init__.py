"""speechssl.corpora: one module per known corpus, and ``CORPORA``, the registry of their preparers.

``prepare_corpus(name, corpus_dir, out_dir, ...)`` is ``speechssl corpus NAME ...``: it looks
the corpus up in :data:`CORPORA` (an unknown name lists the choices), checks the corpus's
options, and calls its ``prepare_<corpus>(corpus_dir, out_dir, ...)``. A new corpus module
registers itself here with ``CORPORA.register(name, CorpusSpec("speechssl.corpora.x:prepare_x", ...))``.

Importing this package imports none of the corpus modules (their readers pull in torch through
:mod:`speechssl.data`): a corpus's ``prepare_<corpus>`` is imported when it runs, so listing the
corpora (``speechssl corpus --help``) stays instant.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from speechssl.registry import Registry


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """How to prepare one corpus.

    ``prepare(corpus_dir, out_dir, min_seconds=..., **options) -> {name: manifest path}``, given as
    the function or as ``"module:function"``, imported on first use (:meth:`preparer`).
    """

    prepare: Callable[..., dict[str, Path]] | str
    # keyword options of ``prepare`` besides min_seconds -> what to give (quoted in errors)
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    required: tuple[str, ...] = ()  # options without which ``prepare`` cannot run

    def preparer(self) -> Callable[..., dict[str, Path]]:
        """The ``prepare`` function, imported from its ``"module:function"`` path if given as one."""
        if callable(self.prepare):
            return self.prepare
        module, _, name = self.prepare.partition(":")
        return getattr(importlib.import_module(module), name)


CORPORA: Registry[CorpusSpec] = Registry("corpus")
CORPORA.register("librispeech", CorpusSpec(
    "speechssl.corpora.librispeech:prepare_librispeech",
    {"subsets": "--subsets: subset folders to read (default all)"}))
CORPORA.register("iemocap", CorpusSpec("speechssl.corpora.iemocap:prepare_iemocap"))
CORPORA.register("voxceleb1", CorpusSpec(
    "speechssl.corpora.voxceleb1:prepare_voxceleb1",
    {"split_file": "--split-file: iden_split.txt (default CORPUS/iden_split.txt)"}))
CORPORA.register("generic", CorpusSpec(
    "speechssl.corpora.generic:prepare_generic",
    {"labels_file": "--labels FILE (CSV/TSV with a path or id column)"}, required=("labels_file",)))


def prepare_corpus(name: str, corpus_dir: str | Path, out_dir: str | Path, min_seconds: float = 0.0,
                   **options: Any) -> dict[str, Path]:
    """Write the manifests of corpus ``name`` read from ``corpus_dir`` into ``out_dir``.

    Args:
        name: a key of :data:`CORPORA` (``librispeech``, ``iemocap``, ``voxceleb1``, ``generic``).
        corpus_dir: the corpus's local folder (nothing is downloaded).
        out_dir: folder for the manifests.
        min_seconds: drop shorter files (reported).
        options: the corpus's own options (``subsets``, ``split_file``, ``labels_file``); a value
            of None means not given.
    Returns:
        ``{manifest name: path}`` as the corpus's ``prepare_<corpus>`` returns it.
    Raises:
        UnknownNameError: an unknown corpus (the message lists the choices).
        ValueError: a required option missing, or an option this corpus does not take.
    """
    spec = CORPORA[name]
    given = {key: value for key, value in options.items() if value is not None}
    unused = sorted(set(given) - set(spec.options))
    if unused:
        takes = ", ".join(spec.options) or "none"
        raise ValueError(f"corpus {name!r} takes no option {', '.join(unused)}; its options: {takes}")
    for key in spec.required:
        if key not in given:
            raise ValueError(f"{name} corpus needs {spec.options[key]}")
    return spec.preparer()(corpus_dir, out_dir=out_dir, min_seconds=min_seconds, **given)


__all__ = ["CORPORA", "CorpusSpec", "prepare_corpus"]
