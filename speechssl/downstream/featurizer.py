"""Featurizer: a learned softmax-weighted sum over a frozen encoder's layers (SUPERB).

``h = sum_l softmax(w)_l * LN(h_l)`` with one scalar weight per layer (Yang et al. 2021; s3prl
``s3prl.nn.Featurizer``). With ``layers: [one_name]`` it simply selects that layer. Weights start
equal (softmax of zeros); they are exported as JSON and plotted as a bar chart.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.upstream.layers import LayerSelection
from speechssl.utils import atomic_write_json


@dataclasses.dataclass
class FeaturizerConfig:
    # "all", "context,latent" or a list of names / indices / aliases (see speechssl.upstream.layers;
    # one layer = that layer only). "all" leaves out layers of another size than the last one and
    # aliases of earlier layers (APC's "context" is its last layer).
    layers: list[str | int] | str | int = "all"
    layer_norm: bool = False  # layer-normalise each layer (no affine) before the weighted sum
    learn_weights: bool = True  # False: fixed equal weights (a plain average)

    def __post_init__(self) -> None:
        LayerSelection.parse(self.layers, "featurizer.layers")  # a malformed selection fails when read

    @property
    def selection(self) -> LayerSelection:
        """``layers`` parsed (the field itself keeps the plain form saved in configs and results)."""
        return LayerSelection.parse(self.layers, "featurizer.layers")


class Featurizer(nn.Module):
    """Weighted sum of stacked layers.

    Args:
        layer_names: names of the stacked layers it receives, in order.
        config: :class:`FeaturizerConfig`.

    ``forward(stacked)``: stacked [batch, layers, frames, dim] -> [batch, frames, dim].
    """

    def __init__(self, layer_names: list[str], config: FeaturizerConfig | None = None):
        super().__init__()
        self.config = config or FeaturizerConfig()
        self.layer_names = list(layer_names)
        weights = torch.zeros(len(self.layer_names))
        if self.config.learn_weights and len(self.layer_names) > 1:
            self.weights = nn.Parameter(weights)
        else:
            self.register_buffer("weights", weights)

    def normalized_weights(self) -> torch.Tensor:
        """[layers] softmax of the raw weights; sums to 1."""
        return torch.softmax(self.weights.float(), dim=0)

    def forward(self, stacked: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """``normalized``: the input is already layer-normalised (pooled fast path)."""
        if stacked.dim() != 4 or stacked.shape[1] != len(self.layer_names):
            raise ValueError(
                f"featurizer expects [batch, {len(self.layer_names)} layers, frames, dim], got {tuple(stacked.shape)}"
            )
        if self.config.layer_norm and not normalized:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        if len(self.layer_names) == 1:
            return stacked[:, 0]
        w = self.normalized_weights().to(stacked.dtype).view(1, -1, 1, 1)
        return (stacked * w).sum(1)

    def weights_dict(self) -> dict[str, float]:
        """``{layer_name: softmax weight}`` in layer order."""
        w = self.normalized_weights().detach().cpu().tolist()
        return dict(zip(self.layer_names, w))

    def export_weights(self, path) -> None:
        """Write ``{"layers": [...], "weights": [...], "by_layer": {...}}`` atomically."""
        d = self.weights_dict()
        atomic_write_json(path, {"layers": list(d), "weights": list(d.values()), "by_layer": d})
