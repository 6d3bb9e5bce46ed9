"""Export an encoder to another toolkit's format.

Targets:
  s3prl-apc  an APC encoder (3 GRU layers, Kaldi fbank frontend with a Hamming window) as a
             checkpoint s3prl's own `apc_local` upstream loads:
               speechssl export s3prl-apc --encoder exp/apc/encoder --out apc_s3prl.ckpt
  hf         a wav2vec 2.0 or HuBERT encoder as a Hugging Face Wav2Vec2Model / HubertModel folder:
               speechssl export hf --encoder exp/w2v/encoder --out hf_w2v/

--encoder takes anything `speechssl.load_encoder` accepts (release folder, experiment folder,
training checkpoint, torchaudio / Hugging Face folder).
"""

from __future__ import annotations

import argparse
import sys

TARGETS = ("s3prl-apc", "hf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", choices=TARGETS, help="export format")
    parser.add_argument("--encoder", required=True, help="encoder folder / checkpoint")
    parser.add_argument("--out", required=True, help="output file (s3prl-apc) or folder (hf)")


def run(args: argparse.Namespace) -> int:
    if args.target == "s3prl-apc":
        from speechssl.integrations.s3prl_apc import export_s3prl_apc

        out = export_s3prl_apc(args.encoder, args.out)
        print(f"wrote {out}: load it in s3prl with S3PRLUpstream('apc_local', path_or_url='{out}') "
              "(hidden states = our layer_1, layer_2, layer_3)", file=sys.stderr)
        return 0
    from speechssl.upstream.hf_export_encoder import export_hf_encoder

    out = export_hf_encoder(args.encoder, args.out)
    print(f"wrote {out}", file=sys.stderr)
    return 0
