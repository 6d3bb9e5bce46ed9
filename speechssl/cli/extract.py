"""Extract frozen-encoder features from audio.

Examples:
  speechssl extract --encoder exp/apc/encoder --input data/wavs --layers context,latent --out feats/
  speechssl extract --encoder logmel --input data/train.jsonl --format hdf5 --dtype float16 --out feats/
  torchrun --nproc_per_node 2 -m speechssl.cli.main extract --encoder E --input wav.scp --out feats/

--encoder takes a released encoder folder, an experiment folder, a training checkpoint (.pt),
a torchaudio / Hugging Face wav2vec2 or HuBERT folder, or a baseline name (logmel, fbank, mfcc).
Outputs: one file per utterance (npy, pt) or one ark / HDF5 file, plus index.tsv
(id, path, frames, frame_rate, layers, dim) and errors.tsv. Rerunning resumes.
"""

from __future__ import annotations

import argparse
import sys

from speechssl.extract.config import FORMATS, ExtractConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ExtractConfig()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--encoder", required=True, help="encoder folder / checkpoint / baseline name")
    parser.add_argument("--input", required=True, help="audio folder, manifest .jsonl, wav.scp or one audio file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--layers", default=defaults.layers,
                        help="comma-separated layer names (latent, layer_1.., context) or 'all' (default)")
    parser.add_argument("--format", choices=FORMATS, default=defaults.format)
    parser.add_argument("--dtype", choices=("float32", "float16"), default=defaults.dtype, help="storage dtype")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision,
                        help="compute precision of the encoder (bf16: autocast, faster on CPUs with bf16 units)")
    parser.add_argument("--device", default=defaults.device, help="cpu | cuda | cuda:N")
    parser.add_argument("--batch-seconds", type=float, default=defaults.batch_seconds,
                        help="padded seconds of audio per forward pass (default %(default)s)")
    parser.add_argument("--chunk-seconds", type=float, default=defaults.chunk_seconds,
                        help="files longer than this are encoded in overlapping chunks (default %(default)s)")
    parser.add_argument("--overlap-seconds", type=float, default=defaults.overlap_seconds,
                        help="context on each side of a chunk (default %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the encoder (inductor; the first batches compile, minutes on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal (a redirected stderr gets a line every 30 s either way)")


def run(args: argparse.Namespace) -> int:
    from speechssl.extract.runner import extract_features  # torch: not for --help

    cfg = ExtractConfig(
        layers=args.layers, format=args.format, dtype=args.dtype, precision=args.precision, batch_seconds=args.batch_seconds,
        chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds, device=args.device,
        progress=not args.no_progress, compile=args.compile,
    )
    summary = extract_features(args.encoder, args.input, args.out, cfg)
    where = f"; index: {summary.index}" if summary.index else ""
    print(
        f"extracted {summary.written} utterance(s) ({summary.seconds:.1f} s of audio) in "
        f"{summary.wall_seconds:.1f} s, {summary.skipped} already done, {summary.failed} failed{where}",
        file=sys.stderr,
    )
    return 0
