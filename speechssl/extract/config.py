"""What ``speechssl extract`` can be asked for: :class:`ExtractConfig` and the output ``FORMATS``.

Plain Python, so ``speechssl extract --help`` shows the defaults without importing the extractor
(:mod:`speechssl.extract.runner`, torch); the runner and :mod:`speechssl.extract.writers` use
these same definitions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

Format = Literal["npy", "pt", "kaldi", "hdf5"]  # output formats: the type of ExtractConfig.format
FORMATS: tuple[str, ...] = get_args(Format)  # the same, for --format's choices and messages


@dataclasses.dataclass
class ExtractConfig:
    layers: Any = "all"  # "all", "context,latent" or a list of names / indices
    format: Format = "npy"
    dtype: Literal["float32", "float16"] = "float32"  # storage dtype (the encoder runs in fp32 or bf16)
    batch_seconds: float = 30.0  # padded seconds of audio per forward pass (keeps wav2vec2 Base, all layers, < 2 GiB)
    chunk_seconds: float = 30.0  # longer files are encoded in overlapping chunks of this length
    overlap_seconds: float = 2.0  # context on each side of a chunk (>= the receptive field)
    device: str = "cpu"  # cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast, much faster where the CPU/GPU has bf16 units
    progress: bool = True  # a tqdm bar on a terminal (log lines every 30 s otherwise, whatever this says)
    # torch.compile the encoder's blocks (speechssl/compilation.py): same features to float rounding;
    # the first batches pay the compilation (tools/bench/run_all.py --only compile measures it)
    compile: bool = False
    rank: int | None = None  # default: $RANK (0)
    world_size: int | None = None  # default: $WORLD_SIZE (1)
    merge_timeout_minutes: float = 24 * 60.0  # rank 0 waits this long for the other ranks
