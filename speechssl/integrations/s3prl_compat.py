"""Compatibility shims that let s3prl 0.4.18 import and run with current torchaudio / huggingface_hub.

Call :func:`apply` before importing anything from ``s3prl``. Every shim only *adds* what is
missing (or replaces a function that cannot work without torchcodec); nothing in s3prl's files is
edited. What s3prl 0.4.18 needs and why:

* ``torchaudio.set_audio_backend`` / ``get_audio_backend`` (removed in torchaudio 2.9, s3prl issue
  #575): called at import time by several upstream modules -> no-ops (there is one backend now).
* ``torchaudio.sox_effects`` (removed): imported by the ``mos_prediction`` upstream and used by
  ``s3prl.dataio`` for resampling effects -> a module whose ``apply_effects_tensor`` supports the
  ``rate``/``channels``/``gain``-free subset s3prl uses (``rate`` and ``channels``) and refuses the rest.
* ``torchaudio.load`` / ``info`` / ``save`` need torchcodec (not installed) -> soundfile-based
  versions with torchaudio's signatures and shapes (``[channels, frames]`` float32).
* ``huggingface_hub.HfFolder`` / ``Repository`` (removed in hub 1.0) are imported by
  ``s3prl/downstream/runner.py`` and ``run_downstream.py`` only for pushing results to the Hub ->
  placeholders that raise a clear error if that feature is used.
* ``tensorboardX`` is imported by the downstream runner but is not among s3prl's declared
  requirements -> if it is not installed, ``torch.utils.tensorboard`` (same ``SummaryWriter``
  API) stands in for it (install ``tensorboardX`` to use the real one).
* ``torch.load`` defaults to ``weights_only=True`` since torch 2.6; s3prl's own downstream
  checkpoints (``states-*.ckpt``) hold an ``argparse.Namespace``, which is allow-listed so
  ``run_downstream -e`` can resume/evaluate them. No other class is allowed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types

import numpy as np
import torch

log = logging.getLogger(__name__)
_APPLIED = False


def _sf_load(filepath, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True,
             channels_first: bool = True, format=None, buffer_size: int = 4096, backend=None):
    import soundfile as sf

    path = filepath if isinstance(filepath, (str, bytes)) or hasattr(filepath, "read") else str(filepath)
    frames = -1 if num_frames is None or num_frames < 0 else int(num_frames)
    data, sr = sf.read(path, start=int(frame_offset), frames=frames, dtype="float32" if normalize else "int16",
                       always_2d=True)
    wav = torch.from_numpy(np.ascontiguousarray(data.T if channels_first else data))
    return wav, int(sr)


def _sf_info(filepath, format=None, buffer_size: int = 4096, backend=None):
    import soundfile as sf

    info = sf.info(str(filepath))
    bits = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "PCM_U8": 8, "FLOAT": 32, "DOUBLE": 64}.get(info.subtype, 0)
    return types.SimpleNamespace(sample_rate=int(info.samplerate), num_frames=int(info.frames),
                                 num_channels=int(info.channels), bits_per_sample=bits, encoding=info.subtype)


def _sf_save(uri, src: torch.Tensor, sample_rate: int, channels_first: bool = True, format=None,
             encoding=None, bits_per_sample=None, buffer_size: int = 4096, backend=None, compression=None):
    import soundfile as sf

    data = src.detach().cpu().numpy()
    if data.ndim == 2 and channels_first:
        data = data.T
    sf.write(str(uri), data, int(sample_rate), subtype="PCM_16" if bits_per_sample in (None, 16) else None)


def _apply_effects_tensor(tensor: torch.Tensor, sample_rate: int, effects, channels_first: bool = True):
    """The subset of sox effects s3prl uses: ``["rate", N]`` and ``["channels", "1"]``."""
    from torchaudio.functional import resample

    wav, sr = tensor if channels_first else tensor.T, int(sample_rate)
    for effect in effects:
        name, *args = [str(e) for e in effect]
        if name == "rate":
            new = int(float(args[0]))
            wav, sr = resample(wav, sr, new), new
        elif name == "channels" and args == ["1"]:
            wav = wav.mean(dim=0, keepdim=True)
        else:
            raise ValueError(
                f"sox effect {effect!r} is not available: torchaudio no longer ships sox_effects "
                "(speechssl's shim supports 'rate' and 'channels 1')"
            )
    return (wav if channels_first else wav.T), sr


class _RemovedHubFeature:
    """Stands in for huggingface_hub classes s3prl imports but only uses to push to the Hub."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "pushing s3prl results to the Hugging Face Hub is not supported with huggingface_hub >= 1.0 "
            "(HfFolder/Repository were removed); leave --push_to_hf_hub off"
        )

    @classmethod
    def save_token(cls, *args, **kwargs):
        cls()

    @classmethod
    def get_token(cls):
        return None


def apply() -> None:
    """Install the shims (idempotent). Must run before ``import s3prl``."""
    global _APPLIED
    if _APPLIED:
        return
    import torchaudio

    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None
    if not hasattr(torchaudio, "get_audio_backend"):
        torchaudio.get_audio_backend = lambda: "soundfile"
    if not hasattr(torchaudio, "list_audio_backends"):
        torchaudio.list_audio_backends = lambda: ["soundfile"]
    try:
        import torchcodec  # noqa: F401

        has_torchcodec = True
    except ImportError:
        has_torchcodec = False
    if not has_torchcodec:
        torchaudio.load = _sf_load
        torchaudio.save = _sf_save
    if not hasattr(torchaudio, "info"):
        torchaudio.info = _sf_info
    if "torchaudio.sox_effects" not in sys.modules:
        try:
            import torchaudio.sox_effects  # noqa: F401
        except ImportError:
            module = types.ModuleType("torchaudio.sox_effects")
            module.apply_effects_tensor = _apply_effects_tensor
            module.__doc__ = "speechssl shim: torchaudio.sox_effects was removed in torchaudio 2.9"
            sys.modules["torchaudio.sox_effects"] = module
            torchaudio.sox_effects = module
    import huggingface_hub

    for name in ("HfFolder", "Repository"):
        if not hasattr(huggingface_hub, name):
            setattr(huggingface_hub, name, type(name, (_RemovedHubFeature,), {}))
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        from torch.utils import tensorboard

        module = types.ModuleType("tensorboardX")
        module.SummaryWriter = tensorboard.SummaryWriter
        module.__doc__ = "speechssl shim: torch.utils.tensorboard standing in for tensorboardX"
        sys.modules["tensorboardX"] = module
    torch.serialization.add_safe_globals([argparse.Namespace])
    _APPLIED = True
    log.debug("s3prl compatibility shims applied")


def import_s3prl_hub():
    """Apply the shims and return ``s3prl.hub``."""
    apply()
    import s3prl.hub

    return s3prl.hub
