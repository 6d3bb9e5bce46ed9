"""SUPERB-style downstream evaluation of frozen encoders.

Library entry points (the ``speechssl downstream`` CLI is a thin wrapper over them)::

    from speechssl.downstream import open_source, downstream_config, run_experiment

    source = open_source("logmel")      # an encoder name/folder, or a `speechssl extract` folder
    cfg = downstream_config({"head": {"name": "superb_utterance"}, "optim": {"lr": 1e-3}})
    results, model = run_experiment(source, {"train": tr, "dev": dv, "test": te}, "emotion", cfg, "exp/er")

Parts: :class:`Featurizer` (learned layer weights over layers chosen with
:class:`speechssl.upstream.layers.LayerSelection`), ``HEADS`` (superb_utterance, speaker_asp,
linear_probe, frame_linear), metrics (WA/UA/macro-F1/confusion), protocols (SUPERB splits, k-fold
by group, learning-rate sweep, label efficiency) returning typed results (:mod:`.results`, written
as ``results.json``), ``predict`` and ``compare``. :func:`finetune` trains the encoder too
(:mod:`.finetune`, ``speechssl downstream finetune``).
"""

from speechssl.downstream.experiment import run_experiment
from speechssl.downstream.feature_cache import EncoderFeatureCache
from speechssl.downstream.features import FeatureSet
from speechssl.downstream.featurizer import Featurizer, FeaturizerConfig
from speechssl.downstream.finetune import finetune
from speechssl.downstream.heads import HEADS, build_head
from speechssl.downstream.inference import compare, input_records, predict
from speechssl.downstream.labels import LabelMap
from speechssl.downstream.metrics import classification_metrics, confusion_matrix, metrics_from_confusion
from speechssl.downstream.model import (
    DownstreamConfig,
    DownstreamModel,
    downstream_config,
    load_downstream_config,
    load_downstream_model,
)
from speechssl.downstream.pooling import AttentiveStatsPool, masked_mean, masked_mean_std
from speechssl.downstream.precomputed import load_precomputed
from speechssl.downstream.protocols import (
    compute_label_efficiency,
    kfold,
    label_efficiency,
    run_kfold,
    run_label_efficiency,
    run_lr_sweep,
    run_superb,
    superb,
    superb_splits,
    write_label_efficiency,
)
from speechssl.downstream.results import (
    ExperimentResult,
    KFoldResult,
    LabelEfficiencyResult,
    LabelEfficiencyRun,
)
from speechssl.downstream.sources import (
    EncoderSource,
    FeatureSource,
    PrecomputedSource,
    open_source,
    source_from_config,
)
from speechssl.downstream.splits import (
    kfold_by_group,
    sample_per_class,
    splits_hash,
    stratified_split,
)

__all__ = [
    "HEADS",
    "AttentiveStatsPool",
    "DownstreamConfig",
    "DownstreamModel",
    "EncoderFeatureCache",
    "EncoderSource",
    "ExperimentResult",
    "FeatureSet",
    "FeatureSource",
    "Featurizer",
    "FeaturizerConfig",
    "KFoldResult",
    "LabelEfficiencyResult",
    "LabelEfficiencyRun",
    "LabelMap",
    "PrecomputedSource",
    "build_head",
    "classification_metrics",
    "compare",
    "compute_label_efficiency",
    "confusion_matrix",
    "downstream_config",
    "finetune",
    "input_records",
    "kfold",
    "kfold_by_group",
    "label_efficiency",
    "load_downstream_config",
    "load_downstream_model",
    "load_precomputed",
    "masked_mean",
    "masked_mean_std",
    "metrics_from_confusion",
    "open_source",
    "predict",
    "run_experiment",
    "run_kfold",
    "run_label_efficiency",
    "run_lr_sweep",
    "run_superb",
    "sample_per_class",
    "source_from_config",
    "splits_hash",
    "stratified_split",
    "superb",
    "superb_splits",
    "write_label_efficiency",
]
