"""Health diagnostics of a pretraining run: is the representation collapsing, is the quantizer
using its codebook, where does the gradient go? And the report ``speechssl inspect`` prints.

Numbers and where they come from (all in ``metrics.jsonl``):

=================================  ==========================================================
``health/<layer>/std_mean``        mean over dimensions of the per-dimension std of the last
``health/<layer>/std_min``         layer's frames on the probe set (probe records); ~0: collapse
``health/<layer>/eff_rank``        effective rank (Roy & Vetterli 2007) of those frames; ~1: collapse
``grad_norm/<block>``              gradient L2 norm per top-level block at the log step, before
                                   clipping (train records; ``grad_norm`` is the window's mean)
``code_perplexity*``               wav2vec 2.0 / VQ-APC quantizer: perplexity of the hard codes
``codebook_usage``                 share of codewords chosen in the batch
``mask_ratio``                     wav2vec 2.0: share of valid frames actually masked
``acc_k<k>``                       CPC: InfoNCE accuracy k steps ahead
``embed_std_mean``, ``embed_eff_rank``  view-based models (SimCLR, Barlow Twins, BYOL-A): per-dim. std
                                   of the batch's normalised pooled embeddings, their effective rank
``recon_masked``                   TERA / MAE: reconstruction error on the masked (altered) frames
``recon_unmasked``                 ... on the frames the model saw unaltered (copying them is easy)
``recon_baseline``                 ... of predicting the mean (0 after CMVN / token normalisation)
                                   on the masked frames; ``recon_masked`` must fall below it
``target_var*``, ``teacher_var``,  data2vec 2.0: variance over frames of the targets (per block:
``student_var``, ``pred_var``      ``target_var_layer_<k>``) and of the networks' outputs; ~0: collapse
``ema_decay``                      teacher-student families (data2vec 2.0, BYOL-A): the EMA teacher's decay
=================================  ==========================================================

:class:`HealthWatch` turns a record into one plain warning line per number that went bad
(once, until it recovers).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

#: A per-dimension std below this (mean over dimensions) means the features are constant.
COLLAPSED_STD = 1e-4
#: An effective rank below this means the frames live on (about) one direction.
COLLAPSED_RANK = 1.5
#: View-based models: std of normalised embeddings x sqrt(dim) below this (1 when spread out) is a collapse.
COLLAPSED_EMBED_STD = 0.05
#: A quantizer group whose hard-code perplexity is below this is using about one code.
COLLAPSED_PERPLEXITY = 1.5
#: Masked-prediction models: below this share of masked frames there is almost nothing to predict.
LOW_MASK_RATIO = 0.05
#: Masked reconstruction: after this many steps the masked frames must be reconstructed better than
#: by predicting their mean (``recon_masked < recon_baseline``).
RECON_GRACE_STEPS = 200


@dataclasses.dataclass
class FeatureSample:
    """Frames of one layer: ``frames`` [F, D] float32 (an evenly spaced sample over utterances)."""

    layer: str
    frames: np.ndarray


def effective_rank(frames: np.ndarray) -> float:
    """Effective rank ``exp(H(s / sum(s)))`` of the centred frames' singular values ``s``.

    Roy & Vetterli (2007); RankMe (Garrido et al. 2023) uses it to watch SSL collapse.
    Between 1 (one direction) and min(F, D); 0 for constant frames.

    Args:
        frames: [F, D].
    """
    x = np.asarray(frames, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    if not total > 1e-12 * max(1.0, float(np.abs(frames).max(initial=0.0))) * math.sqrt(x.size):
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def feature_health(sample: FeatureSample) -> dict[str, float]:
    """``{"health/<layer>/std_mean", "health/<layer>/std_min", "health/<layer>/eff_rank",
    "health/<layer>/dim"}`` of ``sample.frames`` [F, D]."""
    x = np.asarray(sample.frames, dtype=np.float64)
    std = x.std(0)
    key = f"health/{sample.layer}"
    return {f"{key}/std_mean": float(std.mean()), f"{key}/std_min": float(std.min()),
            f"{key}/eff_rank": effective_rank(x), f"{key}/dim": float(x.shape[1])}


def embedding_health(embeddings: torch.Tensor) -> dict[str, float]:
    """Collapse watch of view-based models on a batch of pooled embeddings [N, E] (train records):
    ``embed_std_mean`` / ``embed_std_min`` (per-dimension std of the L2-normalised embeddings; a
    spread-out set has about 1 / sqrt(E)), ``embed_eff_rank`` (of the raw embeddings) and ``embed_dim``."""
    x = embeddings.detach().float()
    std = torch.nn.functional.normalize(x, dim=1).std(0, unbiased=False)
    return {"embed_std_mean": float(std.mean()), "embed_std_min": float(std.min()),
            "embed_eff_rank": effective_rank(x.cpu().numpy()), "embed_dim": float(x.shape[1])}


def block_grad_norms(model: torch.nn.Module, total: float | None = None) -> dict[str, float]:
    """L2 norm of the current gradients of each top-level child module that has parameters.

    Args:
        model: after a backward pass (and possibly after gradient clipping).
        total: the global gradient norm before clipping (what ``clip_grad_norm_`` returned). Clipping
            scales every gradient by one factor, so rescaling the blocks' norms to this total gives
            their norms before clipping. None: the norms as they are.
    Returns:
        ``{"grad_norm/<child>": norm}`` (0.0 for a block without gradients this step).
    """
    norms = {}
    for name, child in model.named_children():
        params = [p for p in child.parameters() if p.requires_grad]  # not a frozen EMA teacher
        if params:
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            norms[name] = float(torch.stack(grads).norm()) if grads else 0.0
    combined = math.sqrt(sum(v * v for v in norms.values()))
    scale = total / combined if total is not None and math.isfinite(total) and combined > 0 else 1.0
    return {f"grad_norm/{name}": value * scale for name, value in norms.items()}


def health_warnings(record: Mapping[str, Any]) -> dict[str, str]:
    """The numbers of ``record`` (a metrics line) that look bad: ``{metric: one plain line}``."""
    bad: dict[str, str] = {}
    for key, value in record.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key.startswith("health/") and key.endswith("/std_mean") and value < COLLAPSED_STD:
            layer = key.split("/")[1]
            bad[key] = (f"representation collapse: the {layer} features are constant on the probe set "
                        f"(mean per-dimension std {value:.2g})")
        elif key.startswith("health/") and key.endswith("/eff_rank") and value < COLLAPSED_RANK:
            layer = key.split("/")[1]
            dim = record.get(key.replace("eff_rank", "dim"), "?")
            dim = int(dim) if isinstance(dim, float) else dim
            bad[key] = (f"representation collapse: the {layer} features have effective rank {value:.2f} "
                        f"of {dim} dimensions")
        elif key == "embed_eff_rank" and value < COLLAPSED_RANK:
            bad[key] = (f"embedding collapse: the batch's pooled embeddings have effective rank {value:.2f}; "
                        "lower optim.lr, add negatives (batch, queue_size) or strengthen the augmentations")
        elif key == "embed_std_mean" and isinstance(record.get("embed_dim"), float) \
                and value * math.sqrt(record["embed_dim"]) < COLLAPSED_EMBED_STD:
            bad[key] = (f"embedding collapse: per-dimension std of the normalised embeddings {value:.2g} "
                        f"(spread out: about {1 / math.sqrt(record['embed_dim']):.2g})")
        elif key.startswith("code_perplexity") and value < COLLAPSED_PERPLEXITY:
            usage = record.get("codebook_usage")
            bad[key] = (f"quantizer collapse: {key} = {value:.2f}, about one code in use"
                        + (f" ({100 * usage:.1f} % of the codebook used)" if isinstance(usage, float) else "")
                        + ("; check the frontend's CMVN (the random-projection targets need normalised input)"
                           if "acc_codebook_0" in record else
                           "; try a larger diversity_weight, a higher temp_min or a lower lr"))
        elif (key == "recon_masked" and isinstance(record.get("recon_baseline"), (int, float))
              and int(record.get("step", 0)) >= RECON_GRACE_STEPS and value >= record["recon_baseline"]):
            bad[key] = (f"masked reconstruction no better than predicting the mean: recon_masked {value:.3g} >= "
                        f"recon_baseline {record['recon_baseline']:.3g} at step {record.get('step')} (recon_unmasked "
                        f"{_fmt(record.get('recon_unmasked'))}); the context is not used: try a lower lr, a smaller "
                        "mask ratio or shorter spans")
        elif key == "mask_ratio" and value < LOW_MASK_RATIO:
            bad[key] = (f"only {100 * value:.1f} % of frames masked: the masked objective has little to predict; "
                        "raise mask_prob or lower mask_span")
    return bad


class HealthWatch:
    """Logs one warning line when a health number goes bad, and again only after it recovered."""

    def __init__(self) -> None:
        self.active: set[str] = set()

    def check(self, record: Mapping[str, Any]) -> list[str]:
        """Warn about the numbers of ``record`` that went bad since the last check; returns the new lines."""
        bad = health_warnings(record)
        checked = {k for k in record}
        self.active -= checked - set(bad)
        new = [line for key, line in bad.items() if key not in self.active]
        self.active |= set(bad)
        for line in new:
            log.warning("step %s: %s", record.get("step"), line)
        return new


# ---------------------------------------------------------------- the run report (speechssl inspect)
def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def _health_keys(records: list[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            healthy = (k.startswith(("health/", "grad_norm", "code_perplexity", "prob_perplexity", "acc", "recon_",
                                     "target_var", "embed_"))
                       or k in ("loss", "codebook_usage", "mask_ratio", "temperature", "alter_ratio", "align",
                                "uniform", "num_negatives", "teacher_var", "student_var", "pred_var", "ema_decay"))
            if healthy and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return keys


def run_report(exp_dir: str | Path) -> str:
    """The health summary and probe curves of a pretraining run, as plain-text tables.

    Reads ``exp_dir/metrics.jsonl`` (and ``config.yaml`` for the model name).

    Raises:
        FileNotFoundError: ``exp_dir`` has no ``metrics.jsonl``.
    """
    from speechssl.config import load_yaml
    from speechssl.train.metrics import probe_curves, read_metrics

    exp = Path(exp_dir)
    path = exp / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{exp}: no metrics.jsonl (not a pretraining experiment folder, or not started)")
    records = read_metrics(path)
    model = "?"
    if (exp / "config.yaml").is_file():
        model = (load_yaml(exp / "config.yaml").get("model") or {}).get("name", "?")
    train = [r for r in records if r.get("split") == "train"]
    probes = [r for r in records if r.get("split") == "probe"]
    last_step = max((int(r["step"]) for r in records), default=0)
    out = [f"{exp}: model {model}, {last_step} steps logged"]
    if train and isinstance(train[-1].get("time"), (int, float)):
        probe_time = sum(r.get("probe_seconds", 0.0) for r in probes)
        out[-1] += f", {train[-1]['time']:.1f} s of training" + (
            f" ({probe_time:.1f} s of it probing, {100 * probe_time / max(1e-9, train[-1]['time']):.1f} %)"
            if probes else "")
    for title, group in (("training health", train), ("probe-set feature health", probes)):
        keys = _health_keys(group)
        if not keys:
            continue
        first, last = group[0], group[-1]
        out += ["", f"{title} (step {first['step']} -> {last['step']})"]
        out += _table(["metric", "first", "last"], [[k, first.get(k), last.get(k)] for k in keys])
    warnings = {**health_warnings(train[-1] if train else {}), **health_warnings(probes[-1] if probes else {})}
    out += ["", "warnings at the last step:" if warnings else "no health warnings at the last step"]
    out += [f"  {line}" for line in warnings.values()]
    curves = probe_curves(probes)
    if not curves:
        out += ["", "no probe records (train.probe.labels is empty)"]
    for label, layers in curves.items():
        steps = sorted({s for pts in layers.values() for s, _ in pts})
        chance = {int(r["step"]): r.get(f"probe_chance/{label}") for r in probes}
        table = {name: dict(pts) for name, pts in layers.items()}
        out += ["", f"probe accuracy: {label} (held-out utterances; chance = majority class)"]
        out += _table(["step", *layers, "chance"],
                      [[s, *(table[n].get(s) for n in layers), chance.get(s)] for s in steps])
    return "\n".join(out)
