"""Classification metrics: WA, UA, macro-F1, confusion matrix.

* WA (weighted accuracy) = plain accuracy = correct / total.
* UA (unweighted accuracy) = mean over classes of per-class recall (classes present in the
  references); the usual IEMOCAP emotion metric.
* macro-F1 = mean over classes of F1 (classes present in the references or the predictions;
  F1 of a class with no true and no predicted items is not counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(refs: Sequence[int], hyps: Sequence[int], num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts; rows = reference class, columns = predicted class."""
    refs = np.asarray(refs, dtype=np.int64)
    hyps = np.asarray(hyps, dtype=np.int64)
    if refs.shape != hyps.shape:
        raise ValueError(f"{len(refs)} references but {len(hyps)} predictions")
    for name, arr in (("reference", refs), ("prediction", hyps)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} class index out of range [0, {num_classes}): {arr.min()}..{arr.max()}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (refs, hyps), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """``{"accuracy", "wa", "ua", "macro_f1", "num"}`` from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("no items to score")
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    acc = float(tp.sum() / total)
    present = support > 0
    ua = float(np.mean(tp[present] / support[present]))
    counted = (support + predicted) > 0
    f1 = 2 * tp[counted] / (support[counted] + predicted[counted])
    return {"accuracy": acc, "wa": acc, "ua": ua, "macro_f1": float(np.mean(f1)), "num": int(total)}


def classification_metrics(refs: Sequence[int], hyps: Sequence[int], num_classes: int) -> dict:
    """Metrics plus the confusion matrix (as nested lists) for ``results.json``."""
    cm = confusion_matrix(refs, hyps, num_classes)
    out: dict = metrics_from_confusion(cm)
    out["confusion_matrix"] = cm.tolist()
    return out
