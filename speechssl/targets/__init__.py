"""Offline discrete targets for masked prediction (HuBERT): k-means on a bounded sample of frames,
sharded resumable assignment with provenance, label reading for training, cluster-quality reports.

    speechssl targets kmeans --features mfcc --train data/train.jsonl --k 100 --sample-hours 1 --out exp/km1
    speechssl targets assign --kmeans exp/km1 --input data/train.jsonl --out exp/labels1
    speechssl pretrain --config recipes/pretrain/hubert_tiny.yaml ... data.targets=[exp/labels1]

Modules: :mod:`~speechssl.targets.features` (MFCC or an encoder layer), :mod:`~speechssl.targets.kmeans`
(fit, hash, nearest centroid), :mod:`~speechssl.targets.assign` (label folders),
:mod:`~speechssl.targets.labels` (batches aligned to the model's frames, every check),
:mod:`~speechssl.targets.report` (usage, entropy, purity, PNMI).
"""

from speechssl.targets.assign import AssignSummary, assign_labels
from speechssl.targets.kmeans import fit_kmeans, load_kmeans
from speechssl.targets.labels import FrameTargets, LabelFolder
from speechssl.targets.report import cluster_report

__all__ = ["AssignSummary", "FrameTargets", "LabelFolder", "assign_labels", "cluster_report", "fit_kmeans",
           "load_kmeans"]
