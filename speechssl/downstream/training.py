"""Training and evaluation of a downstream model on cached features (the frozen encoder is
never run here): Adam, a fixed number of steps, dev evaluation every ``valid_every`` steps,
early stopping on the dev metric, and the best state kept (SUPERB protocol)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from speechssl.downstream.features import FeatureSet, num_frames
from speechssl.downstream.metrics import classification_metrics
from speechssl.downstream.model import DownstreamModel, TrainConfig
from speechssl.downstream.pooling import valid_mask
from speechssl.modules.padding import pad_to_batch
from speechssl.progress import PROGRESS_EVERY_SECONDS, Progress

logger = logging.getLogger(__name__)
IGNORE = -100


def collate_features(
    feats: Sequence[list[torch.Tensor]],
    layer_index: Sequence[int],
    crop_frames: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack the selected layers of several utterances, zero-padded.

    Args:
        feats: per utterance, per-layer [T, D] tensors.
        layer_index: which layers to stack.
        crop_frames: random crop to this many frames (0: none).
    Returns:
        stacked [B, len(layer_index), Tmax, D] float32, lengths [B], crop offsets (frames) per utterance.
    """
    chosen, offsets = [], []
    for layers in feats:
        t = int(layers[0].shape[0])
        off = 0
        if crop_frames and t > crop_frames:
            off = int(torch.randint(0, t - crop_frames + 1, (1,), generator=generator))
            t = crop_frames
        chosen.append([layers[j][off : off + t] for j in layer_index])
        offsets.append(off)
    out, lengths = pad_to_batch([torch.stack(c) for c in chosen], time_dim=1)
    return out, lengths, offsets


def _batch_targets(targets: Sequence, idx: Sequence[int], offsets, lengths: torch.Tensor, level: str) -> torch.Tensor:
    if level == "utterance":
        return torch.tensor([int(targets[i]) for i in idx], dtype=torch.long)
    out = torch.full((len(idx), int(lengths.max())), IGNORE, dtype=torch.long)
    for b, (i, off) in enumerate(zip(idx, offsets)):
        t = int(lengths[b])
        seq = targets[i][off : off + t]
        out[b, : seq.numel()] = seq
    return out


def head_loss(logits: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor, level: str) -> torch.Tensor:
    if level == "utterance":
        return F.cross_entropy(logits.float(), target)
    target = target.masked_fill(~valid_mask(lengths, target.shape[1]), IGNORE)
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE)


_POOLED: dict | None = None  # per-utterance pooled inputs kept by reuse_pooled_inputs(), else None


@contextlib.contextmanager
def reuse_pooled_inputs():
    """Within this block :func:`pooled_inputs` computes each utterance's pooled layers once and
    hands the same tensors back to later runs (a sweep trains and scores many heads on the same
    features: seeds, shots). An utterance is the very same per-layer list object (a source's
    in-memory features); its pooled tensors are what the same ops on the same tensors gave, so
    results are bit-identical. Features read from disk on use (not a list) are not kept."""
    global _POOLED
    outer = _POOLED
    _POOLED = {} if outer is None else outer
    try:
        yield
    finally:
        _POOLED = outer


def _pool_utterance(layers: list[torch.Tensor], layer_index: Sequence[int], layer_norm: bool) -> list[torch.Tensor]:
    x = torch.stack([layers[j] for j in layer_index]).float()  # [n, T, D]
    if layer_norm:
        x = F.layer_norm(x, x.shape[-1:])
    return list(x.mean(1, keepdim=True).unbind(0))


def pooled_inputs(model: DownstreamModel, feats: Sequence[list[torch.Tensor]], layer_index: Sequence[int]):
    """Fast path for heads that only see the mean frame (``head.pools_linearly``): per utterance,
    the mean over frames of every selected (layer-normalised) layer as one [1, D] "frame".
    The featurizer's weighted sum is linear, so this equals the full computation.

    Returns (pooled feats, new layer index, normalized flag) or None when not applicable."""
    if not getattr(model.head, "pools_linearly", False):
        return None
    layer_norm = bool(model.featurizer.config.layer_norm)
    cache = _POOLED if isinstance(feats, list) else None
    # the thread count is part of the key: a reduction split over threads may round differently
    where = (tuple(layer_index), layer_norm, torch.get_num_threads())
    out = []
    for layers in feats:
        if cache is None:
            out.append(_pool_utterance(layers, layer_index, layer_norm))
            continue
        key = (id(layers), *where)
        if key not in cache:  # the list is kept alive with its entry, so no other list can take its id
            cache[key] = (layers, _pool_utterance(layers, layer_index, layer_norm))
        out.append(cache[key][1])
    return out, list(range(len(layer_index))), True


@torch.no_grad()
def predict_features(
    model: DownstreamModel, feats: Sequence[list[torch.Tensor]], layer_index: Sequence[int], batch_size: int = 32
) -> list[torch.Tensor]:
    """Posteriors per utterance: [C] (utterance level) or [T, C] (frame level), in input order."""
    model.eval()
    normalized = False
    fast = pooled_inputs(model, feats, layer_index)
    if fast is not None:
        feats, layer_index, normalized = fast
    order = sorted(range(len(feats)), key=lambda i: num_frames(feats, i))
    probs: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        stacked, lengths, _ = collate_features([feats[i] for i in idx], layer_index)
        p = torch.softmax(model(stacked, lengths, normalized).float(), dim=-1)
        for b, i in enumerate(idx):
            probs[i] = p[b] if model.level == "utterance" else p[b, : int(lengths[b])]
    return [probs[i] for i in range(len(feats))]


def score(model: DownstreamModel, probs: Sequence[torch.Tensor], targets: Sequence) -> dict:
    """Metrics (accuracy/WA, UA, macro-F1, confusion matrix) of posteriors against targets."""
    refs, hyps = [], []
    for p, t in zip(probs, targets):
        if model.level == "utterance":
            refs.append(int(t))
            hyps.append(int(p.argmax()))
        else:
            n = min(p.shape[0], t.numel())
            keep = t[:n] != IGNORE
            refs += t[:n][keep].tolist()
            hyps += p[:n].argmax(-1)[keep].tolist()
    return classification_metrics(refs, hyps, len(model.labels))


def evaluate(model: DownstreamModel, data: FeatureSet, targets: Sequence, batch_size: int = 32) -> tuple[dict, list]:
    """-> (metrics, posteriors per utterance)."""
    layer_index = [data.layer_names.index(n) for n in model.layers]
    probs = predict_features(model, data.feats, layer_index, batch_size)
    return score(model, probs, targets), probs


class HeadAdam:
    """Adam exactly as ``torch.optim.Adam(params, lr, betas, weight_decay=...)`` computes it on
    CPU tensors (its single-tensor path: no foreach, fused, amsgrad or maximize), op for op, so
    the results are bit-identical (tests/test_downstream_fast_sweep.py checks it step by step).
    Without torch.optim's machinery: its first optimiser imports ``torch._dynamo`` (seconds per
    process) and every step pays hooks and checks that a head of a few tensors does not need.
    Only what training a head uses: ``zero_grad()`` (grads set to None) and ``step()``."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(betas), float(eps), weight_decay
        if any(p.is_complex() or p.is_sparse for p in self.params):
            raise ValueError("HeadAdam: real dense parameters only (use torch.optim.Adam)")
        self.state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for p in self.params:
            if p.grad is None:  # as torch: no state, no update
                continue
            if p not in self.state:
                self.state[p] = (torch.tensor(0.0, dtype=scalar), torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format))
            step_t, exp_avg, exp_avg_sq = self.state[p]
            grad = p.grad
            step_t += 1
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = self.lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


@dataclasses.dataclass
class TrainResult:
    best_step: int  # step of the kept state (== steps_run when there is no dev set)
    steps_run: int
    best_dev: dict | None  # dev metrics of the kept state
    history: list[dict]  # one entry per dev evaluation: step, train loss, dev metrics


def train_model(
    model: DownstreamModel,
    train: FeatureSet,
    train_targets: Sequence,
    cfg: TrainConfig,
    lr: float,
    dev: FeatureSet | None = None,
    dev_targets: Sequence | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place; on return it holds the best-on-dev state (or the last one)."""
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(model, train, train_targets, cfg, lr, dev, dev_targets, betas, weight_decay, clip_norm, progress)
    finally:
        torch.set_num_threads(previous)


def _pooled_rows(pooled: Sequence[list[torch.Tensor]], layer_index: Sequence[int]) -> torch.Tensor | None:
    """[utterances, layers, 1, D]: pooled utterances (one frame each: no padding, nothing to crop)
    collated once; a batch is these rows in batch order, the same values as collating it."""
    return collate_features(pooled, layer_index)[0] if len(pooled) else None


def _train(model, train, train_targets, cfg, lr, dev, dev_targets, betas, weight_decay, clip_norm, progress):
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    layer_index = [train.layer_names.index(n) for n in model.layers]
    train_feats, normalized = train.feats, False
    fast = pooled_inputs(model, train_feats, layer_index) if not cfg.crop_frames else None
    whole = None
    if fast is not None:
        train_feats, layer_index, normalized = fast
        whole = _pooled_rows(train_feats, layer_index)
    opt = HeadAdam(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    n = len(train)
    if n == 0:
        raise ValueError("no training utterances")
    order = torch.randperm(n, generator=gen).tolist()
    pos = 0
    best_key, best_state, best_dev, best_step = None, None, None, 0
    history: list[dict] = []
    bad, running, count = 0, 0.0, 0
    step = 0
    # a bar on a terminal (``progress``), else a line every 30 s; not kept on the terminal: a sweep trains many
    bar = Progress(cfg.max_steps, 0, bar=progress, every_seconds=PROGRESS_EVERY_SECONDS, main=True, desc="train head",
                   logger=logger, leave=False)
    for step in range(1, cfg.max_steps + 1):
        model.train()
        idx = []
        while len(idx) < min(cfg.batch_size, n):
            if pos >= n:
                order, pos = torch.randperm(n, generator=gen).tolist(), 0
            idx.append(order[pos])
            pos += 1
        if whole is not None:  # one [1, D] frame per utterance: the rows of the collated set, in batch order
            stacked, lengths, offsets = whole[torch.tensor(idx)], torch.ones(len(idx), dtype=torch.long), [0] * len(idx)
        else:
            stacked, lengths, offsets = collate_features([train_feats[i] for i in idx], layer_index, cfg.crop_frames,
                                                         gen)
        target = _batch_targets(train_targets, idx, offsets, lengths, model.level)
        loss = head_loss(model(stacked, lengths, normalized), target, lengths, model.level)
        opt.zero_grad()
        loss.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        running += loss.item()
        count += 1
        bar.update(step)
        if dev is not None and (step % cfg.valid_every == 0 or step == cfg.max_steps):
            metrics, _ = evaluate(model, dev, dev_targets)
            entry = {"step": step, "train_loss": running / count, **{f"dev_{k}": metrics[k] for k in ("accuracy", "ua", "macro_f1")}}
            history.append(entry)
            running, count = 0.0, 0
            bar.set_postfix(loss=f"{entry['train_loss']:.3f}", dev=f"{metrics[cfg.metric]:.3f}")
            if best_key is None or metrics[cfg.metric] > best_key:
                best_key, best_dev, best_step, bad = metrics[cfg.metric], metrics, step, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if cfg.patience and bad >= cfg.patience:
                    logger.info("early stop at step %d: dev %s best %.4f at step %d", step, cfg.metric, best_key, best_step)
                    break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_step = step
    model.eval()
    return TrainResult(best_step=best_step, steps_run=step, best_dev=best_dev, history=history)
