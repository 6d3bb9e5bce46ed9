"""Using trained downstream models: ``predict`` labels new audio, ``compare`` tabulates results.

``predict`` computes features exactly as training did (same encoder, same layers) and writes the
same TSV as ``predictions_test.tsv``, so predicting the test files reproduces the evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from speechssl.downstream.experiment import SUMMARY_METRICS, short_name, write_predictions
from speechssl.downstream.model import load_downstream_model
from speechssl.downstream.plots import plot_comparison
from speechssl.downstream.sources import open_source
from speechssl.downstream.training import predict_features
from speechssl.utils import atomic_write_text

logger = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".sph")


def input_records(source: str | Path) -> list[dict]:
    """A folder (audio files found recursively, id = relative path without suffix), a JSONL
    manifest, or one audio file -> manifest-like records with ``id`` and ``path``."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
        return [{"id": str(p.relative_to(path).with_suffix("")), "path": str(p.resolve())} for p in files]
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.suffix in (".jsonl", ".json"):
        from speechssl.data import read_manifest

        return read_manifest(path)
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return [{"id": path.stem, "path": str(path.resolve())}]
    raise ValueError(f"{path}: expected a folder, a .jsonl manifest or an audio file ({', '.join(AUDIO_SUFFIXES)})")


def predict(model_dir: str | Path, inputs: str | Path | Sequence[dict], out: str | Path | None = None,
            encoder: str | None = None, features: str | Path | None = None, batch_size: int = 8) -> Path:
    """Label ``inputs`` with the model in ``model_dir``; writes ``out`` (default
    ``model_dir/predictions.tsv``): ``id  prediction  confidence  [reference]``.

    The encoder is the one recorded in the model unless ``encoder``/``features`` say otherwise.
    An input that gives no features (unreadable or empty audio, too short for the encoder, not in
    the feature folder) is reported and left out: it is listed, with the reason, in
    ``<out stem>.errors.tsv`` (``id  path  reason``; removed when every input worked). It raises
    only when no input works.
    """
    model_dir = Path(model_dir)
    model = load_downstream_model(model_dir)
    records = input_records(inputs) if isinstance(inputs, (str, Path)) else list(inputs)
    recorded = model.meta.get("encoder") or {}
    spec = encoder or recorded.get("spec")
    if not spec and not features:
        raise ValueError(f"{model_dir}: the model was trained on precomputed features without an encoder name; "
                         "pass --encoder NAME|DIR or --features DIR")
    source = open_source(spec, features, batch_size=batch_size, encoder_options=recorded.get("options") or {})
    _check_same_weights(model_dir, recorded, source.describe(), features)
    fs = source.features(records, desc="encoding", skip_failed=True)
    out = Path(out) if out else model_dir / "predictions.tsv"
    errors_path = predict_errors_path(out)
    if fs.failed:
        for uid, reason in fs.failed.items():
            logger.warning("predict: skipping %s: %s", uid, reason)
        paths = {r["id"]: str(r.get("path", "")) for r in records}
        atomic_write_text(errors_path, "id\tpath\treason\n" + "".join(
            f"{uid}\t{paths.get(uid, '')}\t{' '.join(reason.split())}\n" for uid, reason in fs.failed.items()))
        records = [r for r in records if r["id"] not in fs.failed]
    else:
        errors_path.unlink(missing_ok=True)  # from an earlier run on other inputs
    missing = [n for n in model.layers if n not in fs.layer_names]
    if missing:
        raise ValueError(f"{model_dir}: the model uses layers {missing} that encoder {spec!r} lacks ({fs.layer_names})")
    probs = predict_features(model, fs.feats, [fs.layer_names.index(n) for n in model.layers])
    label = model.meta.get("label")
    refs = None
    if label and all(label in r for r in records):
        refs = [" ".join(map(str, r[label])) if isinstance(r[label], list) else str(r[label]) for r in records]
    write_predictions(out, [r["id"] for r in records], probs, model.labels, refs)
    return out


def _check_same_weights(model_dir: Path, recorded: dict, given: dict, features: str | Path | None) -> None:
    """Refuse features of other encoder weights than the model was trained on (same layer names
    and sizes, e.g. another run of the same recipe, would otherwise give confident nonsense).
    Models saved before the weights were recorded are not checked."""
    trained, now = recorded.get("weights_sha256"), given.get("weights_sha256")
    if trained and now and trained != now:
        what = (f"the features in {features} come from" if features
                else f"encoder {given.get('spec')!r} has")
        raise ValueError(
            f"{model_dir}: the model was trained on encoder {recorded.get('spec')!r} (weights sha256 "
            f"{trained[:12]}...), but {what} other weights ({now[:12]}...); predict with that encoder "
            "(or features it extracted), or train a model on these")


def predict_errors_path(out: str | Path) -> Path:
    """Where :func:`predict` lists the inputs it left out: ``preds.tsv`` -> ``preds.errors.tsv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.errors.tsv")


def _load_results(exp: Path) -> dict:
    path = exp / "results.json" if exp.is_dir() else exp
    if not path.is_file():
        raise FileNotFoundError(f"{exp}: no results.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from None


def compare(exp_dirs: Sequence[str | Path], png: str | Path | None = None,
            metrics: Sequence[str] = SUMMARY_METRICS, out: str | Path | None = None) -> str:
    """Markdown table of the experiments' summaries (mean ± std over folds/seeds when several);
    also written to ``out`` when given, and plotted to ``png``."""
    rows, errs = [], []
    lines = ["| experiment | encoder | protocol | split | " + " | ".join(metrics) + " |",
             "|---|---|---|---|" + "---|" * len(metrics)]
    for exp in map(Path, exp_dirs):
        res = _load_results(exp)
        summary = res.get("summary")
        if not summary:
            raise ValueError(f"{exp}/results.json has no 'summary' (label-efficiency results compare by their plot)")
        enc = short_name((res.get("encoder") or {}).get("spec"))
        cells = []
        for m in metrics:
            s = summary[m]
            cells.append(f"{s['mean']:.4f}" if s.get("n", 1) == 1 else f"{s['mean']:.4f} ± {s['std']:.4f}")
        lines.append(f"| {exp} | {enc} | {res.get('protocol', {}).get('name', '?')} | "
                     f"{res.get('summary_split', '?')} | " + " | ".join(cells) + " |")
        rows.append((str(exp), {m: summary[m]["mean"] for m in metrics}))
        errs.append((str(exp), {m: summary[m]["std"] for m in metrics}))
    table = "\n".join(lines) + "\n"
    if png:
        plot_comparison(rows, metrics, png, errors=errs)
    if out:
        save_table(table, out)
    return table


def save_table(text: str, path: str | Path) -> None:
    atomic_write_text(path, text)
