"""``load_encoder(path_or_name, **options)``: one call for every kind of encoder.

``path_or_name`` may be

* a released speechssl encoder folder (``config.json`` + ``model.safetensors``,
  :mod:`speechssl.upstream.release`), e.g. ``exp/apc/encoder``;
* an experiment folder ``exp/apc`` (its ``encoder/`` release, else its newest checkpoint);
* a training checkpoint ``exp/apc/checkpoints/step_00000500.pt`` (read with
  ``torch.load(weights_only=True)``: tensors and plain containers only, never code);
* a torchaudio or Hugging Face wav2vec 2.0 / HuBERT folder (via
  :func:`speechssl.upstream.importers.load_foreign`);
* a baseline name: ``logmel``, ``fbank``, ``mfcc`` (:mod:`speechssl.upstream.baselines`);
* an :class:`SSLModel` instance (wrapped as it is);
* a torchaudio ``Wav2Vec2Model`` / ``HuBERTPretrainModel`` or a Hugging Face ``Wav2Vec2Model`` /
  ``HubertModel`` (/ ``Wav2Vec2ForPreTraining`` / ``Wav2Vec2ForCTC``) object, imported with
  :func:`~speechssl.upstream.importers.from_torchaudio` / :func:`~speechssl.upstream.importers.from_hf`.

:func:`save_encoder` writes any of these model objects (or an :class:`Encoder` over one) as a
released encoder folder, so an imported model is loaded by path afterwards like any other::

    from speechssl.upstream import load_encoder, save_encoder
    save_encoder(torchaudio.pipelines.WAV2VEC2_BASE.get_model(), "encoders/w2v2_base")
    enc = load_encoder("encoders/w2v2_base")   # or: speechssl extract --encoder encoders/w2v2_base

Options (:class:`EncoderOptions`): ``layers`` ("all" | list | "context,latent"), ``device``,
``trainable``. Baselines also take their frontend's config fields (``n_mels=40``). Any other
option is an error that lists the valid ones: nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechssl.models.base import SSLModel, build_loaded
from speechssl.upstream.baselines import BASELINES, build_baseline, frontend_option_names
from speechssl.upstream.encoder import Encoder, EncoderOptions, option_names
from speechssl.upstream.release import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_released_model,
    read_release_config,
    save_released_encoder,
)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


class EncoderLoadError(ValueError):
    """The source is not a loadable encoder; the message says what was found and what was expected."""


def _split_options(options: Mapping[str, Any], extra_names: list[str], source: str) -> tuple[EncoderOptions, dict]:
    common = option_names()
    unknown = [k for k in options if k not in common and k not in extra_names]
    if unknown:
        valid = common + extra_names
        raise TypeError(
            f"load_encoder({source!r}): unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}"
        )
    enc_opts = EncoderOptions(**{k: v for k, v in options.items() if k in common})
    extra = {k: v for k, v in options.items() if k not in common}
    return enc_opts, extra


def _model_config_from_checkpoint(ckpt: Mapping[str, Any], path: Path) -> dict:
    """The model section of a trainer checkpoint (``config.model`` or ``model_config``)."""
    for key in ("model_config",):
        if isinstance(ckpt.get(key), Mapping):
            return dict(ckpt[key])
    config = ckpt.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
        return dict(config["model"])
    raise EncoderLoadError(
        f"{path}: not a speechssl training checkpoint: no 'config' -> 'model' section "
        f"(top-level keys: {', '.join(sorted(map(str, ckpt)))})"
    )


def _state_dict_from_checkpoint(ckpt: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "model_state", "state_dict"):
        state = ckpt.get(key)
        if isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values()):
            return dict(state)
    raise EncoderLoadError(
        f"{path}: no model state dict (looked for 'model', 'model_state', 'state_dict'; "
        f"top-level keys: {', '.join(sorted(map(str, ckpt)))})"
    )


def load_checkpoint_model(path: str | Path) -> SSLModel:
    """Rebuild the model of a training checkpoint without its optimiser or task state.

    The file is read by :func:`speechssl.train.checkpoint.load_checkpoint`
    (``torch.load(weights_only=True)``, kind and format-version checks); the model comes from
    its ``config["model"]`` section and ``model`` state dict.
    """
    from speechssl.train.checkpoint import load_checkpoint

    path = Path(path)
    ckpt = load_checkpoint(path)
    cfg = _model_config_from_checkpoint(ckpt, path)
    return build_loaded(cfg, _state_dict_from_checkpoint(ckpt, path), str(path), EncoderLoadError)


def _is_release(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file() and _has_format_version(folder)


def _has_format_version(folder: Path) -> bool:
    import json

    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "format_version" in cfg and "model" in cfg


def _backbone_from_path(path: Path) -> tuple[nn.Module, str, str]:
    """-> (model, kind, resolved source)."""
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise EncoderLoadError(
                f"{path}: a file encoder must be a training checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}); "
                "for a released encoder pass its folder"
            )
        return load_checkpoint_model(path), "checkpoint", str(path)
    if _is_release(path):
        read_release_config(path)  # format-version check with a clear message
        return load_released_model(path), "released", str(path)
    if (path / "encoder").is_dir() and _is_release(path / "encoder"):
        return load_released_model(path / "encoder"), "released", str(path / "encoder")
    if (path / CONFIG_NAME).is_file() and _has_format_version(path):  # a release without its weights
        raise EncoderLoadError(f"{path}: {WEIGHTS_NAME} is missing (its {CONFIG_NAME} is a speechssl release's)")
    if (path / "checkpoints").is_dir():
        from speechssl.train.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise EncoderLoadError(f"{path}: experiment folder without encoder/ and with no checkpoint")
        return load_checkpoint_model(ckpt), "checkpoint", str(ckpt)
    from speechssl.upstream.importers import load_foreign

    try:
        model = load_foreign(path)
    except (ValueError, KeyError, OSError) as exc:
        raise EncoderLoadError(
            f"{path}: not a speechssl release (config.json + model.safetensors), experiment folder, "
            f"training checkpoint, nor a torchaudio/Hugging Face model folder: {exc}"
        ) from None
    model.eval()
    return model, "foreign", str(path)


_IMPORTERS_HINT = (
    "import other wav2vec 2.0 / HuBERT models with speechssl.upstream.importers "
    "(from_torchaudio, from_hf, load_foreign), or pass a speechssl SSLModel"
)


def _foreign_family(obj: nn.Module) -> str | None:
    """``"torchaudio"`` / ``"hf"`` when ``obj``'s class comes from that library, else None."""
    top = type(obj).__module__.split(".", 1)[0]
    return {"torchaudio": "torchaudio", "transformers": "hf"}.get(top)


def as_ssl_model(obj: nn.Module) -> tuple[SSLModel, str]:
    """The speechssl model behind ``obj`` and a label of where it came from.

    ``obj`` is an :class:`SSLModel` (returned as it is), an :class:`Encoder` over one, or a
    torchaudio / Hugging Face wav2vec 2.0 or HuBERT object (imported, weights copied).
    Raises:
        EncoderLoadError: anything else, or a foreign object the importers cannot map; the
            message names the type and points to the importers.
    """
    if isinstance(obj, Encoder):
        if not isinstance(obj.backbone, SSLModel):
            raise EncoderLoadError(
                f"encoder {obj.source!r} (kind {obj.kind}) is not a trained speechssl model; "
                "baselines are rebuilt by name and need no saving"
            )
        return obj.backbone, obj.source
    if isinstance(obj, SSLModel):
        return obj, type(obj).__name__
    family = _foreign_family(obj)
    name = f"{type(obj).__module__}.{type(obj).__name__}"
    if family is None:
        raise EncoderLoadError(
            f"{name} is neither a speechssl model (no encode(wavs, lengths) method) nor a torchaudio "
            f"Wav2Vec2Model/HuBERTPretrainModel or Hugging Face Wav2Vec2Model/HubertModel; {_IMPORTERS_HINT}"
        )
    from speechssl.upstream.importers import ForeignCheckpointError, from_hf, from_torchaudio

    try:
        if family == "hf" and type(obj).__name__.startswith("Data2VecAudio"):
            from speechssl.upstream.data2vec_hf import from_hf_data2vec

            model = from_hf_data2vec(obj)
        else:
            model = from_torchaudio(obj) if family == "torchaudio" else from_hf(obj)
    except (ForeignCheckpointError, KeyError, AttributeError) as exc:
        raise EncoderLoadError(f"cannot import {name}: {exc}; {_IMPORTERS_HINT}") from None
    label = f"{'torchaudio' if family == 'torchaudio' else 'transformers'} {type(obj).__name__}"
    return model.eval(), label


def save_encoder(model_or_encoder: nn.Module, folder: str | Path) -> Path:
    """Write a model as a released speechssl encoder folder (``config.json`` + ``model.safetensors``).

    Args:
        model_or_encoder: an :class:`SSLModel`, an :class:`Encoder` over one, or a torchaudio /
            Hugging Face wav2vec 2.0 / HuBERT object (imported first, see :func:`as_ssl_model`).
        folder: the release folder; ``load_encoder(folder)`` and ``speechssl extract --encoder
            folder`` read it back. Its ``config.json`` records the origin under ``extra.source``.
    Returns:
        The folder.
    Raises:
        EncoderLoadError: an object that is not one of the above.
    """
    model, source = as_ssl_model(model_or_encoder)
    return save_released_encoder(model, folder, extra={"source": source})


def load_encoder(path_or_name: str | Path | nn.Module, **options: Any) -> Encoder:
    """Load a frozen encoder; see the module docstring for sources and options.

    Returns:
        Encoder: ``enc(wavs[B, L], lengths[B]) -> EncoderOutput`` in eval mode, no grad by default.
    Raises:
        TypeError: an unknown option (the message lists the valid ones).
        EncoderLoadError / FileNotFoundError: an unloadable or missing source.
    """
    if isinstance(path_or_name, nn.Module):
        opts, _ = _split_options(options, [], type(path_or_name).__name__)
        if hasattr(path_or_name, "encode"):
            return Encoder(path_or_name.eval(), opts, source=type(path_or_name).__name__, kind="model")
        model, source = as_ssl_model(path_or_name)  # torchaudio / Hugging Face objects, else a clear error
        return Encoder(model, opts, source=source, kind="foreign")
    source = str(path_or_name)
    path = Path(source).expanduser()
    if path.exists():
        opts, _ = _split_options(options, [], source)
        backbone, kind, resolved = _backbone_from_path(path)
        return Encoder(backbone, opts, source=resolved, kind=kind)
    if source in BASELINES:
        opts, frontend_opts = _split_options(options, frontend_option_names(source), source)
        return Encoder(build_baseline(source, frontend_opts), opts, source=source, kind="baseline")
    raise FileNotFoundError(
        f"load_encoder: {source!r} is neither an existing file/folder nor a baseline name "
        f"({', '.join(BASELINES)})"
    )


def encoder_option_help() -> str:
    """One line per option, for CLI help."""
    return "; ".join(f"{f.name} (default {f.default!r})" for f in dataclasses.fields(EncoderOptions))
