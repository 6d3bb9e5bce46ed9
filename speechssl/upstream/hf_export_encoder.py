"""``speechssl export hf``: any encoder speechssl loads -> a Hugging Face ``Wav2Vec2Model`` / ``HubertModel``
(or, for data2vec, ``Data2VecAudioModel``) folder.

A module of its own, beside :mod:`speechssl.upstream.hf_export`, because it loads encoders:
``hf_export`` is imported by the importers, which ``load_encoder`` reaches, so loading from
``hf_export`` itself would make the importers <-> hf_export cycle again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechssl.models.hubert import HubertModel
from speechssl.models.wav2vec2 import Wav2Vec2Model
from speechssl.upstream.encoder import Encoder
from speechssl.upstream.hf_export import export_hf
from speechssl.upstream.loading import load_encoder


def export_hf_encoder(encoder_or_path: Any, folder: str | Path) -> Path:
    """``speechssl export hf``: load an encoder and write its wav2vec 2.0 model with :func:`export_hf`.

    Args:
        encoder_or_path: an :class:`~speechssl.upstream.Encoder`, or anything
            :func:`speechssl.upstream.load_encoder` accepts (release folder, experiment folder,
            training checkpoint, torchaudio / Hugging Face folder).
        folder: the Hugging Face folder to write.
    Returns:
        ``folder``.
    Raises:
        ValueError: naming the encoder, when its model is not a wav2vec 2.0-style
            :class:`Wav2Vec2Model` (APC, CPC and baselines have no Hugging Face form).
    """
    enc = encoder_or_path if isinstance(encoder_or_path, Encoder) else load_encoder(encoder_or_path)
    from speechssl.models.data2vec2 import Data2Vec2Model

    if isinstance(enc.backbone, Data2Vec2Model):  # a Data2VecAudioModel folder
        from speechssl.upstream.data2vec_hf import export_hf_data2vec

        return export_hf_data2vec(enc.backbone, folder)
    if not isinstance(enc.backbone, (Wav2Vec2Model, HubertModel)):
        raise ValueError(f"{encoder_or_path}: hf export needs a wav2vec 2.0, HuBERT or data2vec encoder, got "
                         f"{type(enc.backbone).__name__}")
    return export_hf(enc.backbone, folder)
