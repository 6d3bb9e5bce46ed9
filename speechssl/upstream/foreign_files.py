"""Reading foreign model folders (Hugging Face, torchaudio): their JSON files and their weights, without
unpickling code. Shared by the wav2vec 2.0 / HuBERT importers (:mod:`speechssl.upstream.importers`) and
the data2vec importer (:mod:`speechssl.upstream.data2vec_hf`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from speechssl.upstream.foreign_tables import ForeignCheckpointError

# weights files looked for, first found wins
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TA_WEIGHTS = ("model.safetensors", "model.pt", "model.pth")


def read_json(path: Path) -> dict:
    """A foreign folder's JSON file as a dict, or ForeignCheckpointError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ForeignCheckpointError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ForeignCheckpointError(f"{path}: expected a JSON object")
    return data


def read_weights(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors of the first weights file found (safetensors, sharded safetensors, or a torch file)."""
    from speechssl.utils import read_safetensors

    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(read_json(path).get("weight_map", {}).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_safetensors(folder / shard, error=ForeignCheckpointError))
            return state
        if name.endswith(".safetensors"):
            return read_safetensors(path, error=ForeignCheckpointError)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling refused or corrupt file: say which
            raise ForeignCheckpointError(f"{path}: cannot load with weights_only=True: {exc}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ForeignCheckpointError(f"{path}: expected a flat dict of tensors")
        return state
    raise ForeignCheckpointError(f"{folder}: no weights file; looked for {', '.join(names)}")
