"""Export an encoder to another toolkit's format.

Targets:
  s3prl-apc  an APC encoder (3 GRU layers, Kaldi fbank frontend with a Hamming window) as a
             checkpoint s3prl's own `apc_local` upstream loads:
               speechssl export s3prl-apc --encoder exp/apc/encoder --out apc_s3prl.ckpt
  s3prl-tera a TERA / Mockingjay encoder (post-LN, 10 ms Kaldi fbank frames) as a checkpoint
             s3prl's own `tera_local` / `mockingjay_local` upstreams load:
               speechssl export s3prl-tera --encoder exp/tera/encoder --out tera_s3prl.ckpt
  hf         a wav2vec 2.0, HuBERT or data2vec encoder as a Hugging Face Wav2Vec2Model / HubertModel /
             Data2VecAudioModel folder:
               speechssl export hf --encoder exp/w2v/encoder --out hf_w2v/

--encoder takes anything `speechssl.load_encoder` accepts (release folder, experiment folder,
training checkpoint, torchaudio / Hugging Face folder).
"""

from __future__ import annotations

import argparse
import sys

TARGETS = ("s3prl-apc", "s3prl-tera", "hf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", choices=TARGETS, help="export format")
    parser.add_argument("--encoder", required=True, help="encoder folder / checkpoint")
    parser.add_argument("--out", required=True, help="output file (s3prl-apc, s3prl-tera) or folder (hf)")


def run(args: argparse.Namespace) -> int:
    if args.target == "s3prl-apc":
        from speechssl.integrations.s3prl_apc import export_s3prl_apc

        out = export_s3prl_apc(args.encoder, args.out)
        print(f"wrote {out}: load it in s3prl with S3PRLUpstream('apc_local', path_or_url='{out}') "
              "(hidden states = our layer_1, layer_2, layer_3)", file=sys.stderr)
        return 0
    if args.target == "s3prl-tera":
        from speechssl.integrations.s3prl_tera import export_s3prl_tera

        out = export_s3prl_tera(args.encoder, args.out)
        print(f"wrote {out}: load it in s3prl with S3PRLUpstream('tera_local', path_or_url='{out}') "
              "(hidden states = our latent, layer_1 .. layer_N)", file=sys.stderr)
        return 0
    from speechssl.upstream.hf_export_encoder import export_hf_encoder

    out = export_hf_encoder(args.encoder, args.out)
    print(f"wrote {out}", file=sys.stderr)
    return 0
