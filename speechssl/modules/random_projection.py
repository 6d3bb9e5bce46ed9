"""Frozen random-projection quantizer: the target side of BEST-RQ (Chiu et al. 2022, section 2.1).

SpeechBrain ``speechbrain.nnet.quantisers.RandomProjectionQuantizer``; the paper's
``y = argmin_i || norm_l2(c_i) - norm_l2(A x) ||``. For each of ``num_codebooks`` codebooks::

    x  [B, T, in_dim]   normalised, stacked log-Mel / fbank frames (the model's unmasked input)
    p  = l2norm(x @ projection[k])            projection[k]: [in_dim, code_dim], Xavier-uniform
    code[k] = argmax_i  p . l2norm(codebook[k, i])   codebook[k]: [codebook_size, code_dim], N(0, 1)

On l2-normalised vectors the nearest code by Euclidean distance is the one of largest cosine, so
one matmul and an argmax give it. The projection and the codebook are *buffers*: they are never
trained, no optimiser sees them, and they are saved with the model (released encoders and
checkpoints carry the exact targets the model was trained on). They are drawn from their own
``torch.Generator`` seeded with ``seed``, so they do not depend on (or advance) the global RNG and
two models built with the same seed have the same quantizer. Computed in fp32 without autograd.

The input must be normalised (per-utterance or global CMVN): with raw log-Mel the large shared
offset dominates every projection and the targets collapse onto a few codes (the paper's
section 2.1 and SpeechBrain's recipe both normalise first).

Only BEST-RQ uses this block; HuBERT's targets come from k-means (``speechssl.targets``). Both
share the classifier side, :mod:`speechssl.modules.masked_prediction`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projection + random codebook(s) -> discrete targets.

    Args:
        in_dim: dimension of the input frames (e.g. 4 x 80 = 320 for 4 stacked 80-dim log-Mel frames).
        num_codebooks: independent projections/codebooks (the paper's multi-softmax variant; 1 by default).
        codebook_size: codes per codebook (paper: 8192).
        code_dim: dimension of the projected space and of the codewords (paper: 16).
        seed: seed of the generator that draws the projection and the codebooks.
    """

    def __init__(self, in_dim: int, num_codebooks: int = 1, codebook_size: int = 8192, code_dim: int = 16,
                 seed: int = 0):
        super().__init__()
        for key, value in (("in_dim", in_dim), ("num_codebooks", num_codebooks), ("codebook_size", codebook_size),
                           ("code_dim", code_dim)):
            if value < 1:
                raise ValueError(f"RandomProjectionQuantizer: {key} must be >= 1, got {value}")
        self.in_dim, self.num_codebooks = in_dim, num_codebooks
        self.codebook_size, self.code_dim = codebook_size, code_dim
        g = torch.Generator().manual_seed(int(seed))
        # Xavier-uniform (Glorot) bound for an in_dim -> code_dim map, as in the paper.
        bound = math.sqrt(6.0 / (in_dim + code_dim))
        projection = (torch.rand(num_codebooks, in_dim, code_dim, generator=g) * 2 - 1) * bound
        codebook = F.normalize(torch.randn(num_codebooks, codebook_size, code_dim, generator=g), dim=-1)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)  # stored l2-normalised

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of every frame.

        Args:
            x: [batch, frames, in_dim] normalised frames (padding frames get codes too; ignore them).

        Returns:
            LongTensor [batch, frames, num_codebooks].
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"RandomProjectionQuantizer: expected frames of dimension {self.in_dim}, "
                             f"got shape {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            proj = torch.einsum("btd,kde->btke", x.float(), self.projection.float())
            proj = F.normalize(proj, dim=-1)
            sims = torch.einsum("btke,kve->btkv", proj, self.codebook.float())
        return sims.argmax(-1)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}, "
                f"code_dim={self.code_dim}, frozen")
