"""``torch.compile`` of a model's blocks: ``train.compile: true`` and ``speechssl extract --compile``.

Usage::

    from speechssl.compilation import compile_model
    compiled = compile_model(model)                       # inductor; returns the compiled block names
    compile_model(model, backend="aot_eager")             # tests: no C++ code generation

What is compiled: every top-level block of the model (``model.named_children()``: the frontend,
conv encoder, transformer / RNN context, quantizer, heads ...) with ``nn.Module.compile``, *in
place*: parameter names, state dicts, checkpoints and released encoders are unchanged. The loss
code between the blocks (span masks, distractor sampling, metrics) stays eager.

Numbers: compiled blocks give eager's numbers to float rounding. Inductor is asked for
``fallback_random`` (dropout and Gumbel noise from PyTorch's own RNG, in eager order), so a
compiled step draws the same masks, dropout and noise as an eager one from the same seed.
Inside compiled code speechssl's hand-written CPU kernels are off (``speechssl.accel``): inductor
cannot lower oneDNN's linear with a trainable weight, and the fast GRU's loop over frames would be
unrolled; ``nn.GRU``/``nn.LSTM`` stay single operators.

Off by default: measured on a 2-core AMD EPYC (``tools/bench/run_all.py --only compile``) the
inductor-compiled training steps were not faster than speechssl's eager fast paths and the first
step paid minutes of compilation (see that section of ``bench/results.json``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("inductor", "aot_eager", "eager")


def compile_model(model: nn.Module, backend: str = "inductor", dynamic: bool | None = None) -> list[str]:
    """Compile ``model``'s top-level blocks in place; returns their names.

    Args:
        model: an :class:`~speechssl.models.base.SSLModel` (or any module whose children do the work).
        backend: ``inductor`` (generated C++ on CPU), ``aot_eager`` (traced, no code generation:
            tests), ``eager`` (dynamo only).
        dynamic: ``torch.compile``'s ``dynamic`` (None: static shapes first, dynamic after a
            recompilation, as batches of other lengths arrive).

    Raises:
        ValueError: an unknown backend (naming the choices).
    """
    if backend not in BACKENDS:
        raise ValueError(f"compile backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    options = {"fallback_random": True} if backend == "inductor" else None
    names = []
    for name, child in model.named_children():
        if not any(True for _ in child.modules() if _has_work(_)):
            continue
        child.compile(backend=backend, dynamic=dynamic, options=options)
        names.append(name)
    log.info("torch.compile (%s): %s", backend, ", ".join(names) or "nothing to compile")
    return names


def _has_work(module: nn.Module) -> bool:
    """A block worth compiling: it holds parameters or buffers, or is one of speechssl's frontends."""
    return (any(True for _ in module.parameters(recurse=False))
            or any(True for _ in module.buffers(recurse=False))
            or type(module).__module__.startswith("speechssl.features"))


def is_compiled(module: nn.Module) -> bool:
    """Whether :func:`compile_model` compiled some block of ``module``."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())


def reset() -> None:
    """Forget every compiled graph (``torch._dynamo.reset``): tests and benchmarks between models."""
    torch._dynamo.reset()
