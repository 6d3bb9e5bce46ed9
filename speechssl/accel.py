"""Which CPU kernels speechssl uses, decided once per process: the one seam for every speed-up.

Every fast path gives the numbers of PyTorch's reference code to float rounding. The two switched
on or off as a whole:

* ``onednn_linear``: fp32 CPU matmuls of :mod:`speechssl.modules.linear` (and the conv feature
  encoder's inference path and the fast GRU's matmuls) through oneDNN's
  ``torch.ops.mkldnn._linear_pointwise`` instead of ``F.linear`` (MKL's AVX2 path on AMD CPUs:
  about 2x slower on wav2vec 2.0's shapes, measured with ``tools/bench``);
* ``fast_gru``: the custom-backward GRU of :mod:`speechssl.modules.gru` (about 2x faster APC/CPC
  training on CPU).

and four per-shape rules described below (``mkl_min_weight``, ``conv_grad``, ``fast_dropout``,
``winograd_conv``).

:func:`decision` decides once per process. oneDNN is *available* on x86-64 with AVX2 or better
(``torch.backends.cpu.get_cpu_capability()``) when the operator exists and passes a self-check
that runs its forward (plain and fused GELU) *and* the two transposed-stride calls of its backward
(``grad @ W`` and ``grad^T @ x`` read through ``.t()`` views) against ``torch.matmul`` (the fast
GRU's backward makes the same calls). It is *chosen* per CPU vendor: on Intel MKL's sgemm runs its
AVX-512 code and was the fastest fp32 kernel (issue 19: a 2-core Xeon), so matmuls stay on
``F.linear`` there; elsewhere (AMD) oneDNN. One exception, per shape (issues 15 and 19): on CPUs
with AVX2 but no AVX-512 (ISA ``AVX2``, e.g. this project's 2-core AMD EPYC) matmuls whose weight
has at least :data:`MKL_MIN_WEIGHT` (768 x 768) elements go to MKL (``Decision.mkl_min_weight``):
measured there, one thread, forward + both backward matmuls, MKL's sgemm took 1.2-1.6x less time
than oneDNN on every HuBERT / wav2vec 2.0 Base shape (M = 400-1500 frames; 768 x 768 / 2304 / 3072,
3072 x 768, and the conv encoder's 512 x 1536 windows), while on the small weights of the demo's
models (<= 512 x 1024) the two were within 1.0-1.17x at one thread and oneDNN was ahead at two; so
those keep oneDNN and the demo's numbers do not move. The conv feature encoder follows the same
rule per layer (:mod:`speechssl.modules.tap_conv`: its MKL layers run as one matmul per kernel tap,
channels-last, in training too). A rule, not a per-process timing: a kernel that flipped
between runs on a loaded machine would break bit-exact resume. ``tools/bench`` measures both
kernels (``matmul_peak``) and records whether the choice was the faster one (``kernel_check``).
A third rule, ``conv_grad`` (issue 19): on the same AVX2-only CPUs a grouped conv whose weight has at
least :data:`MKL_MIN_WEIGHT` elements (the Base positional conv: 768 x 48 x 128) takes its gradients
as two forward convolutions (:mod:`speechssl.modules.grouped_conv`; PyTorch's oneDNN conv backward is
1.4-1.7x slower than a forward of the same size there); the demo's positional convs (<= 192 x 24 x 64)
keep PyTorch's backward and their numbers.
A fourth rule, ``fast_dropout`` (issue 19): transformer layers whose model width reaches
:data:`DROPOUT_MIN_DIM` (768, the Base models) draw their dropout masks from 31-bit integers and run
attention with dropout as their own kernel sequence (:mod:`speechssl.modules.dropout`; PyTorch's
``bernoulli_`` mask costs about 3x a ``random_`` of the same size on CPU). The masks are a different
random stream, so narrower models (the demo's, <= 512) keep ``nn.Dropout`` and their numbers.
A fifth rule, ``winograd_conv``: where the conv encoder runs a layer per kernel tap (``tap_conv``), a
kernel-3, stride-2 layer whose weight has at least :data:`MKL_MIN_WEIGHT` elements (Base's four 512 x 512 x 3
layers) runs as polyphase Winograd F(3,2) (:mod:`speechssl.modules.winograd_conv`: 7 MKL matmuls per 3
output frames instead of 9: Base's layer 1.16-1.20x faster, measured numbers in ``reasons``); the
transformed weights round once more, so its outputs differ from the per-tap ones at float rounding
(HuBERT Base's hidden states by at most 7.6e-6), and the demo's encoders (no tap layers) never take it.
A sixth case, CPUs that run AVX-512 on 256-bit units (AMD family 25 with AVX-512: Zen 4; ``Decision.cpu_family``):
MKL's AVX2 sgemm reaches their full vector rate, so the conv encoder's large layers run per kernel tap and
Winograd (``Decision.tap_conv_min_weight``, :func:`tap_conv`) and the Base positional conv takes ``conv_grad``,
as on AVX2-only CPUs, while every linear keeps oneDNN (faster there: 205 vs 168 GFLOP/s at 1024 x 1024).
Measured on a 2-core AMD EPYC of family 25, idle, 2026-11-29: Base's layer 1 forward + backward 1.57x
``F.conv1d``; the HuBERT Base training step 1.09x faster with the rules than without (in one process), 1.17x ->
1.27-1.32x torchaudio's in four runs.
The environment overrides: ``SPEECHSSL_ONEDNN=0`` / ``1`` (off / on wherever available, every
shape: no per-shape rule), ``SPEECHSSL_FAST_GRU=0``, ``SPEECHSSL_CONV_GRAD=0`` / ``1`` (off / every shape),
``SPEECHSSL_FAST_DROPOUT=0`` / ``1`` (off / every width), ``SPEECHSSL_WINOGRAD=0`` / ``1`` (off / every
kernel-3, stride-2 tap layer). The record (kernels chosen, why, the conv layout, CPU vendor, model and
family, ISA) is :meth:`Decision.as_dict`, for logs and benchmark reports.

Blocks ask :func:`onednn_linear` (with the weight's size: ``onednn_linear(weight.numel())``) /
:func:`fast_gru` when they run. Tests (and benchmarks) force a
path for a block of code with :func:`use` -- a context variable, so no module global changes and
other threads are unaffected::

    with accel.use(onednn_linear=False, fast_gru=False):
        reference = model(x)
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import platform
from collections.abc import Iterator

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on", "force")
# MKL's own vendor: its sgemm takes the AVX-512 path there and beat oneDNN (issue 19, a 2-core Xeon)
_MKL_VENDORS = ("GenuineIntel",)
_FAST_ISAS = ("AVX2", "AVX512")  # oneDNN's fp32 matmul beats MKL's on these (tools/bench)
# AVX2 without AVX-512: MKL's sgemm beat oneDNN on weights of at least 768 x 768 (module docstring)
MKL_MIN_WEIGHT = 768 * 768
_MKL_LARGE_ISAS = ("AVX2",)
# CPUs that run AVX-512 on 256-bit units, by (vendor, family): AMD family 0x19 with AVX-512 is Zen 4 (Zen 3
# has none). The sixth case of the module docstring.
_AVX512_ON_256_BIT = (("AuthenticAMD", 25),)
# model width from which transformer dropout takes speechssl.modules.dropout (the Base models)
DROPOUT_MIN_DIM = 768
# what the winograd_conv rule bought where it was measured (speechssl.modules.winograd_conv's docstring)
WINOGRAD_MEASURED = ("Base's layer 1 forward 1.18x, forward + backward 1.16x the per-tap path at two threads; HuBERT "
                     "Base training step 1.03x (two runs), extraction 1.01-1.06x (three runs); AMD EPYC AVX2, load 0.2-1.9, "
                     "2026-11-28")
WINOGRAD_MEASURED_ZEN4 = ("Base's layer 1 forward + backward 1.57x F.conv1d and 1.22x the per-tap path, layer 3 1.31x and "
                          "1.14x; AMD EPYC family 25 with AVX-512, idle, 2026-11-29")


@dataclasses.dataclass(frozen=True)
class Decision:
    """The kernels chosen for this process and why.

    Attributes:
        onednn_linear: fp32 CPU matmuls go through oneDNN (else ``F.linear``: MKL). Chosen per CPU
            vendor where oneDNN works: off on Intel (MKL's AVX-512 sgemm is the fastest there), on
            elsewhere (MKL runs its AVX2 code on AMD: oneDNN about 2x). The conv encoder's inference
            layout follows it (``reasons["conv_layout"]``).
        fast_gru: :class:`speechssl.modules.gru.GRU` takes its custom-backward path.
        reasons: one short sentence per kernel saying why it is on or off.
        cpu_vendor, cpu_model: from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere).
        machine: ``platform.machine()``.
        isa: ``torch.backends.cpu.get_cpu_capability()`` (``AVX2``, ``AVX512``, ``DEFAULT``...).
        torch_version: the PyTorch the check ran on.
        onednn_available: oneDNN's operator exists and passed the self-check (whatever was chosen).
        mkl_min_weight: where ``onednn_linear`` is on, matmuls whose weight has at least this many
            elements still go to MKL (AVX2-only CPUs, :data:`MKL_MIN_WEIGHT`); None: oneDNN for all.
        conv_grad_min_weight: grouped stride-1 convs (the positional conv) whose weight has at least
            this many elements take their gradients as forward convolutions
            (:mod:`speechssl.modules.grouped_conv`); None: PyTorch's conv backward everywhere.
        dropout_min_dim: CPU transformer layers at least this wide take :mod:`speechssl.modules.dropout`
            (integer-drawn masks, their own attention with dropout); None: ``nn.Dropout`` and SDPA everywhere.
        winograd_min_weight: the conv encoder's per-tap layers with kernel 3, stride 2 and a weight of at
            least this many elements run as Winograd F(3,2) (:mod:`speechssl.modules.winograd_conv`); None:
            per tap (:mod:`speechssl.modules.tap_conv`) everywhere.
        tap_conv_min_weight: the conv encoder's multi-channel layers whose weight has at least this many
            elements run as MKL matmuls per kernel tap, channels-last (:mod:`speechssl.modules.tap_conv`),
            in training and inference (AVX2-only CPUs, with ``mkl_min_weight``; CPUs that run AVX-512 on
            256-bit units); None: ``F.conv1d`` in training, oneDNN windows in inference.
        cpu_family: the CPU family number (``/proc/cpuinfo``), None where it cannot be read.
    """

    onednn_linear: bool
    fast_gru: bool
    reasons: dict[str, str]
    cpu_vendor: str
    cpu_model: str
    machine: str
    isa: str
    torch_version: str
    onednn_available: bool = False  # oneDNN passed its self-check here (``use`` may force it on)
    mkl_min_weight: int | None = None  # with onednn_linear: weights of >= this many elements go to MKL
    conv_grad_min_weight: int | None = None  # grouped convs with weights of >= this many elements: grouped_conv
    dropout_min_dim: int | None = None  # transformer layers at least this wide: speechssl.modules.dropout
    winograd_min_weight: int | None = None  # kernel-3 stride-2 tap layers with weights this large: Winograd F(3,2)
    tap_conv_min_weight: int | None = None  # conv encoder layers with weights this large: per tap on MKL
    cpu_family: int | None = None  # /proc/cpuinfo's "cpu family"

    def as_dict(self) -> dict:
        """A JSON-ready copy (benchmarks and run logs record it)."""
        return dataclasses.asdict(self)


def _env_off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in _OFF


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (read once per process); {} where it cannot be read."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_identity() -> tuple[str, str]:
    """``(vendor, model name)`` of this machine's CPU (``"unknown"`` where it cannot be read)."""
    fields = _cpuinfo()
    return (fields.get("vendor_id") or platform.processor() or "unknown",
            fields.get("model name") or platform.processor() or "unknown")


# Environment variables that pin the kernels' instruction set (egs/common.sh ``cpu_kernels portable``): PyTorch's own
# kernels, oneDNN's, MKL's (conditional numerical reproducibility) and OpenBLAS's (NumPy / SciPy / scikit-learn).
KERNEL_PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OPENBLAS_CORETYPE")


def cpu_kernels() -> dict:
    """Which CPU and kernels a run computed with, for its record (a training run's config.yaml): the CPU, the
    instruction set PyTorch's kernels use, and the :data:`KERNEL_PINS` set in the environment. Two runs of one
    config and seed give the same numbers when these agree (AVX2 and AVX-512 kernels sum in different orders)."""
    d = decision()
    family = f" family {d.cpu_family}" if d.cpu_family is not None else ""
    return {"cpu": f"{d.cpu_vendor} {d.cpu_model}{family}", "isa": d.isa,
            "pinned": {name: os.environ[name] for name in KERNEL_PINS if os.environ.get(name)}}


def cpu_family() -> int | None:
    """The ``cpu family`` number of ``/proc/cpuinfo`` (AMD: 25 for Zen 3 / Zen 4, 26 for Zen 5); None where
    it cannot be read."""
    try:
        return int(_cpuinfo()["cpu family"])
    except (KeyError, ValueError):
        return None


def _isa() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, atol=1e-4, rtol=1e-4))


def _check_onednn() -> tuple[bool, str]:
    """Forward (plain, fused GELU) and the backward's transposed-stride calls vs torch.matmul."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None:
        return False, "torch.ops.mkldnn._linear_pointwise is missing from this PyTorch build"
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for rows, inp, out in ((37, 48, 20), (2 * 9, 16, 12)):
                x = torch.randn(rows, inp, generator=gen)
                w = torch.randn(out, inp, generator=gen)
                b = torch.randn(out, generator=gen)
                g = torch.randn(rows, out, generator=gen)
                ok = (
                    _close(op(x, w, b, "none", [], ""), F.linear(x, w, b))
                    and _close(op(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b)))
                    # backward of y = x W^T: dx = g W (W^T read through its strides) ...
                    and _close(op(g, w.t(), None, "none", [], ""), g @ w)
                    # ... and dW = g^T x (both operands transposed views)
                    and _close(op(g.t(), x.t(), None, "none", [], ""), g.t() @ x)
                )
                if not ok:
                    return False, f"oneDNN disagrees with torch.matmul on a {rows}x{inp}->{out} self-check"
    except Exception as exc:  # noqa: BLE001 - any failure of the operator means: use F.linear
        return False, f"oneDNN self-check raised {type(exc).__name__}: {exc}"
    return True, "x86-64, oneDNN forward and backward self-check passed"


def decide() -> Decision:
    """Decide afresh from the environment, the CPU and the self-checks (:func:`decision` caches it)."""
    machine = platform.machine()
    vendor, model = cpu_identity()
    isa = _isa()
    family = cpu_family()
    # AVX-512 on 256-bit units: MKL's AVX2 code runs at the full vector rate (see _AVX512_ON_256_BIT)
    half_width = isa == "AVX512" and (vendor, family) in _AVX512_ON_256_BIT
    reasons = {}
    setting = os.environ.get("SPEECHSSL_ONEDNN", "auto").strip().lower()
    if machine.lower() not in ("x86_64", "amd64"):
        available, why = False, f"not an x86-64 CPU ({machine})"
    elif not torch.backends.mkldnn.is_available():
        available, why = False, "this PyTorch build has no oneDNN (mkldnn)"
    elif isa not in _FAST_ISAS:
        available, why = False, f"CPU capability {isa}: no AVX2, oneDNN gains nothing"
    else:
        available, why = _check_onednn()
    if setting in _OFF:
        onednn, reasons["onednn_linear"] = False, "SPEECHSSL_ONEDNN is off in the environment"
    elif not available:
        onednn, reasons["onednn_linear"] = False, why
    elif setting in _ON:
        onednn, reasons["onednn_linear"] = True, f"SPEECHSSL_ONEDNN={setting} in the environment; {why}"
    elif vendor in _MKL_VENDORS:
        onednn, reasons["onednn_linear"] = False, (
            f"{vendor}: MKL's sgemm takes its AVX-512 path on Intel CPUs and was the fastest fp32 kernel "
            "there (torch.mm 325 GFLOP/s on a 2-core Xeon); SPEECHSSL_ONEDNN=1 forces oneDNN")
    else:
        onednn, reasons["onednn_linear"] = True, (
            f"{vendor}: MKL runs its AVX2 code on non-Intel CPUs, oneDNN's matmul about 2x faster "
            f"(tools/bench matmul_peak); {why}")
    mkl_min = None
    if onednn and setting not in _ON and isa in _MKL_LARGE_ISAS:
        mkl_min = MKL_MIN_WEIGHT
        reasons["mkl_min_weight"] = (
            f"{isa} without AVX-512: matmuls with weights of >= 768 x 768 elements go to MKL (1.2-1.6x faster than "
            "oneDNN on HuBERT / wav2vec 2.0 Base shapes at one thread); smaller ones keep oneDNN")
    else:
        reasons["mkl_min_weight"] = "no per-shape rule: every fp32 matmul follows onednn_linear"
    reasons["conv_layout"] = ("channels-last windows matmul (the fp32 inference conv path follows onednn_linear)"
                              if onednn else "PyTorch's conv1d (oneDNN convolution), channels-first")
    tap_min = None
    if mkl_min:
        tap_min = mkl_min
        reasons["conv_layout"] += ("; layers whose weight reaches mkl_min_weight run as MKL matmuls per kernel tap, "
                                   "in training too")
    elif onednn and setting not in _ON and half_width:
        tap_min = MKL_MIN_WEIGHT
        reasons["conv_layout"] += (
            f"; {vendor} family {family} runs AVX-512 on 256-bit units, where MKL's AVX2 sgemm is as fast: conv "
            "encoder layers with weights of >= 768 x 768 elements run as MKL matmuls per kernel tap, in training "
            "too (Base's layer 1 forward + backward 1.29x F.conv1d, 1.57x with Winograd; AMD EPYC family 25, "
            "2026-11-29)")
    conv_grad_setting = os.environ.get("SPEECHSSL_CONV_GRAD", "auto").strip().lower()
    conv_grad = None
    if conv_grad_setting in _OFF:
        reasons["conv_grad"] = "SPEECHSSL_CONV_GRAD is off in the environment: PyTorch's conv backward"
    elif conv_grad_setting in _ON:
        conv_grad, reasons["conv_grad"] = 0, f"SPEECHSSL_CONV_GRAD={conv_grad_setting}: every grouped conv"
    elif machine.lower() in ("x86_64", "amd64") and (isa in _MKL_LARGE_ISAS or half_width):
        conv_grad = MKL_MIN_WEIGHT
        where, gain = ((f"{isa} without AVX-512", "the positional conv's backward 1.3-1.7x faster")
                       if isa in _MKL_LARGE_ISAS else
                       (f"{vendor} family {family}, AVX-512 on 256-bit units",
                        "Base's positional conv forward + backward 1.06x at two threads, 1.09x at one"))
        reasons["conv_grad"] = (
            f"{where}: grouped convs with weights of >= 768 x 768 elements take their gradients as forward convs "
            f"({gain}); smaller ones keep PyTorch's backward")
    else:
        reasons["conv_grad"] = f"CPU capability {isa}: not measured, PyTorch's conv backward"
    dropout_setting = os.environ.get("SPEECHSSL_FAST_DROPOUT", "auto").strip().lower()
    if dropout_setting in _OFF:
        dropout_min, reasons["fast_dropout"] = None, "SPEECHSSL_FAST_DROPOUT is off in the environment: nn.Dropout"
    elif dropout_setting in _ON:
        dropout_min, reasons["fast_dropout"] = 0, f"SPEECHSSL_FAST_DROPOUT={dropout_setting}: every width"
    else:
        dropout_min = DROPOUT_MIN_DIM
        reasons["fast_dropout"] = (
            f"transformer layers of width >= {DROPOUT_MIN_DIM} draw dropout masks with random_ (about 3x cheaper than "
            "bernoulli_) and run their own attention with dropout; narrower ones keep nn.Dropout and SDPA")
    winograd_setting = os.environ.get("SPEECHSSL_WINOGRAD", "auto").strip().lower()
    winograd_min = None
    if winograd_setting in _OFF:
        reasons["winograd_conv"] = "SPEECHSSL_WINOGRAD is off in the environment: the tap layers run per tap"
    elif winograd_setting in _ON:
        winograd_min, reasons["winograd_conv"] = 0, (
            f"SPEECHSSL_WINOGRAD={winograd_setting}: every kernel-3, stride-2 layer the conv encoder runs per tap")
    elif tap_min is not None:
        winograd_min = MKL_MIN_WEIGHT
        where, measured = (isa, WINOGRAD_MEASURED) if mkl_min else ("AVX-512 on 256-bit units", WINOGRAD_MEASURED_ZEN4)
        reasons["winograd_conv"] = (
            f"{where}: the conv encoder's per-tap kernel-3, stride-2 layers with weights of >= 768 x 768 elements "
            f"run as Winograd F(3,2), 7 instead of 9 matmuls per 3 frames ({measured})")
    else:
        reasons["winograd_conv"] = "no per-tap conv layers here (no per-shape MKL rule): not used"
    if _env_off("SPEECHSSL_FAST_GRU"):
        gru, reasons["fast_gru"] = False, "SPEECHSSL_FAST_GRU is off in the environment"
    else:
        # pure PyTorch ops plus the matmuls checked above (the same transposed-stride calls)
        gru, reasons["fast_gru"] = True, ("on for training (its matmuls follow onednn_linear); forward-only runs "
                                          "take nn.GRU, faster without a backward")
    for kernel, on in (("onednn_linear", onednn), ("fast_gru", gru)):
        if not on and "environment" not in reasons[kernel]:
            log.info("%s off: %s", kernel, reasons[kernel])
    return Decision(onednn_linear=onednn, fast_gru=gru, reasons=reasons, cpu_vendor=vendor, cpu_model=model,
                    machine=machine, isa=isa, torch_version=torch.__version__, onednn_available=available,
                    mkl_min_weight=mkl_min, conv_grad_min_weight=conv_grad, dropout_min_dim=dropout_min,
                    winograd_min_weight=winograd_min, tap_conv_min_weight=tap_min, cpu_family=family)


@functools.cache
def decision() -> Decision:
    """This process's :class:`Decision`, made at the first call."""
    return decide()


_FORCED: contextvars.ContextVar[dict[str, bool] | None] = contextvars.ContextVar("speechssl_accel_forced",
                                                                                 default=None)


@contextlib.contextmanager
def use(onednn_linear: bool | None = None, fast_gru: bool | None = None,
        conv_grad: bool | None = None, fast_dropout: bool | None = None,
        winograd: bool | None = None) -> Iterator[None]:
    """Force kernels inside the ``with`` block (None: keep the current choice). ``conv_grad``,
    ``fast_dropout`` and ``winograd`` (pure PyTorch ops, possible everywhere) force :func:`conv_grad_as_conv` /
    :func:`fast_dropout` / :func:`winograd_conv` for every shape.

    Forcing a fast path *on* where the process decision is off (e.g. no oneDNN on this CPU) is
    refused with a ``RuntimeError``: the kernel would fail or give wrong numbers.
    """
    forced = dict(_FORCED.get() or {})
    for name, flag in (("onednn_linear", onednn_linear), ("fast_gru", fast_gru)):
        if flag is None:
            continue
        possible = decision().onednn_available if name == "onednn_linear" else decision().fast_gru
        if flag and not possible:
            raise RuntimeError(f"cannot force {name} on: {decision().reasons[name]}")
        forced[name] = bool(flag)
    for name, flag in (("conv_grad", conv_grad), ("fast_dropout", fast_dropout), ("winograd", winograd)):
        if flag is not None:
            forced[name] = bool(flag)
    token = _FORCED.set(forced)
    try:
        yield
    finally:
        _FORCED.reset(token)


def onednn_linear(weight_numel: int | None = None) -> bool:
    """Whether fp32 CPU matmuls go through oneDNN here (the process decision, or :func:`use`).

    ``weight_numel``: the weight's size, for the per-shape rule (``Decision.mkl_min_weight``: large
    weights go to MKL on AVX2-only CPUs); None asks whether oneDNN is on at all. A kernel forced
    with :func:`use` holds for every shape.

    Never inside ``torch.compile`` (``train.compile``): inductor cannot lower oneDNN's linear with a
    trainable weight ("weight must be a graph constant"); it picks its own matmul kernels there.
    """
    if torch.compiler.is_compiling():
        return False
    forced = (_FORCED.get() or {}).get("onednn_linear")
    if forced is not None:
        return forced
    decided = decision()
    if not decided.onednn_linear:
        return False
    return weight_numel is None or decided.mkl_min_weight is None or weight_numel < decided.mkl_min_weight


def mkl_large(weight_numel: int) -> bool:
    """Whether a matmul with a weight of ``weight_numel`` elements goes to MKL by the per-shape rule
    (``Decision.mkl_min_weight``; never when a kernel is forced with :func:`use` or inside
    ``torch.compile``). The conv feature encoder runs such layers per kernel tap (``tap_conv``)."""
    return _mkl_rule(decision().mkl_min_weight, weight_numel)


def tap_conv(weight_numel: int) -> bool:
    """Whether a multi-channel conv encoder layer with a weight of ``weight_numel`` elements runs as MKL matmuls
    per kernel tap (:mod:`speechssl.modules.tap_conv`; ``Decision.tap_conv_min_weight``: the layers that
    :func:`mkl_large` sends to MKL on AVX2-only CPUs, and on CPUs that run AVX-512 on 256-bit units). Never
    when a kernel is forced with :func:`use` (the reference conv path) or inside ``torch.compile``."""
    return _mkl_rule(decision().tap_conv_min_weight, weight_numel)


def _mkl_rule(threshold: int | None, weight_numel: int) -> bool:
    """A per-shape MKL rule of the oneDNN decision (:func:`mkl_large`, :func:`tap_conv`): ``weight_numel >=
    threshold`` where oneDNN is on; never when a kernel is forced with :func:`use` or inside ``torch.compile``."""
    if torch.compiler.is_compiling() or (_FORCED.get() or {}).get("onednn_linear") is not None:
        return False
    return bool(decision().onednn_linear and threshold is not None and weight_numel >= threshold)


def _size_rule(name: str, threshold: int | None, size: int) -> bool:
    """A per-shape rule: forced with :func:`use`, else ``size >= threshold`` (None: off); never inside
    ``torch.compile``."""
    if torch.compiler.is_compiling():
        return False
    forced = (_FORCED.get() or {}).get(name)
    if forced is not None:
        return forced
    return threshold is not None and size >= threshold


def conv_grad_as_conv(weight_numel: int) -> bool:
    """Whether a grouped stride-1 conv with a weight of ``weight_numel`` elements takes its gradients as forward
    convolutions (:mod:`speechssl.modules.grouped_conv`; ``Decision.conv_grad_min_weight``, or :func:`use`).
    Never inside ``torch.compile``."""
    return _size_rule("conv_grad", decision().conv_grad_min_weight, weight_numel)


def fast_dropout(width: int) -> bool:
    """Whether dropout in a CPU transformer layer of model width ``width`` takes :mod:`speechssl.modules.dropout`
    (``Decision.dropout_min_dim``, or :func:`use`). Never inside ``torch.compile``."""
    return _size_rule("fast_dropout", decision().dropout_min_dim, width)


def winograd_conv(weight_numel: int) -> bool:
    """Whether a kernel-3, stride-2 conv encoder layer that runs per kernel tap (:func:`tap_conv`) with a weight
    of ``weight_numel`` elements takes Winograd F(3,2) (:mod:`speechssl.modules.winograd_conv`;
    ``Decision.winograd_min_weight``, or :func:`use`). Never inside ``torch.compile``."""
    return _size_rule("winograd", decision().winograd_min_weight, weight_numel)


def fast_gru() -> bool:
    """Whether :class:`speechssl.modules.gru.GRU` takes its fast path here (decision, or :func:`use`).

    Never inside ``torch.compile``: its Python loop over frames would be unrolled into the graph;
    ``nn.GRU`` stays one operator there.
    """
    if torch.compiler.is_compiling():
        return False
    return (_FORCED.get() or {}).get("fast_gru", decision().fast_gru)


@functools.cache
def bf16_lstm() -> bool:
    """Whether oneDNN can run an LSTM under CPU bf16 autocast here.

    PyTorch's CPU LSTM under autocast goes to oneDNN, which has no bf16 LSTM primitive on CPUs
    without AVX512 ("could not create a primitive descriptor for the LSTM forward propagation
    primitive", seen on a 2-core AMD EPYC with AVX2 only). Checked once per process on a tiny LSTM;
    where it fails, :class:`speechssl.modules.recurrent.RNNStack` runs its LSTM layers in fp32.
    """
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(8, 8, batch_first=True)(torch.randn(2, 3, 8))
    except RuntimeError as exc:
        log.info("bf16 LSTM off (LSTM layers run in fp32 under bf16 autocast): %s", str(exc).splitlines()[0])
        return False
    return True
