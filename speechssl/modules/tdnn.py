"""A frame encoder of dilated 1-D convolutions (TDNN, as in x-vectors) with statistics pooling.

Used by the view-based families (SimCLR/COLA, Barlow Twins, triplet): frames in, every layer's frames
and one pooled utterance embedding out::

    enc = TDNNEncoder(in_dim=80, channels=256, kernels=[5, 3, 3, 1], dilations=[1, 2, 3, 1], embed_dim=256)
    layers, embedding = enc(feats, lengths)   # feats [B, T, 80] -> N x [B, T, 256], [B, 256]

Each layer: Conv1d ("same" zero padding) -> ReLU -> LayerNorm over channels, with padded frames
zeroed after every layer, so a valid frame never sees another utterance's padding and batched
output equals single-utterance output. Pooling: mean and standard deviation over the valid frames of
the last layer, then a linear map (Snyder et al. 2018's statistics pooling).
"""

from __future__ import annotations

import torch
from torch import nn

from speechssl.modules.padding import lengths_to_mask


class TDNNEncoder(nn.Module):
    """Dilated conv stack + statistics pooling (see the module docstring)."""

    def __init__(self, in_dim: int, channels: int, kernels: list[int], dilations: list[int], embed_dim: int):
        super().__init__()
        if len(kernels) != len(dilations) or not kernels:
            raise ValueError(f"kernels {kernels} and dilations {dilations} must be non-empty and of one length")
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be odd (centred 'same' convolutions), got {kernels}")
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        dim = in_dim
        for k, d in zip(kernels, dilations):
            self.convs.append(nn.Conv1d(dim, channels, k, dilation=d, padding=d * (k - 1) // 2))
            self.norms.append(nn.LayerNorm(channels))
            dim = channels
        self.pool = nn.Linear(2 * channels, embed_dim)
        self.channels = channels
        self.embed_dim = embed_dim

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """feats [B, T, in_dim], lengths [B] valid frames (>= 1) -> (layers: N x [B, T, C], embedding [B, E])."""
        valid = lengths_to_mask(lengths, feats.shape[1]).unsqueeze(-1).to(feats.dtype)
        x = feats * valid
        layers = []
        for conv, norm in zip(self.convs, self.norms):
            x = norm(torch.relu(conv(x.transpose(1, 2)).transpose(1, 2))) * valid
            layers.append(x)
        count = lengths.clamp(min=1).to(x.dtype)[:, None]
        mean = x.sum(1) / count
        var = (((x - mean[:, None]) ** 2) * valid).sum(1) / count
        stats = torch.cat([mean, (var + 1e-5).sqrt()], 1)
        return layers, self.pool(stats)


class ProjectionMLP(nn.Module):
    """SimCLR / Barlow Twins projector: (Linear -> BatchNorm1d -> ReLU) x (len(dims) - 1), then Linear.

    dims: [in, hidden..., out] (SimCLR: 2 layers; Barlow Twins: 3 layers of 8192, scaled down for tiny configs).
    """

    def __init__(self, dims: list[int]):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"projector dims need at least [in, out], got {dims}")
        layers: list[nn.Module] = []
        for i in range(len(dims) - 2):
            layers += [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
        layers.append(nn.Linear(dims[-2], dims[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
