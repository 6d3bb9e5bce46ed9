#!/usr/bin/env bash
# SUPERB speaker identification on a local VoxCeleb1 copy (iden_split.txt: 1 train, 2 dev, 3 test).
# Usage:
#   bash egs/voxceleb1/sid/run.sh --corpus /data/voxceleb1 \
#       --encoders "fbank ../../librispeech/ssl/exp/apc/encoder" [--config ../../../recipes/downstream/speaker.yaml]
#       [--overrides "train.max_steps=200000"]
# Stages: 1 manifests, 2 training per encoder, 3 comparison table.
{ # bash reads the whole block before it runs: an edit of this file does not reach a run under way
set -euo pipefail
cd "$(dirname "$0")"
corpus=
encoders="fbank"
config=../../../recipes/downstream/speaker.yaml
overrides=
. ../../common.sh
[ -n "$corpus" ] || die "--corpus /path/to/voxceleb1 (with iden_split.txt and wav/) is required"

if begin_stage 1 "VoxCeleb1 manifests"; then
  speechssl corpus voxceleb1 "$corpus" --out data
  speechssl manifest info data/train.jsonl
  done_stage 1
fi

if begin_stage 2 "speaker-ID training for: $encoders"; then
  for enc in $encoders; do
    # shellcheck disable=SC2086
    speechssl downstream train --encoder "$enc" --train data/train.jsonl --valid data/dev.jsonl \
      --test data/test.jsonl --label speaker --config "$config" --exp "exp/sid_$(encoder_name "$enc")" $overrides
  done
  done_stage 2
fi

if begin_stage 3 "comparison"; then
  compare_encoders "sid_"
  done_stage 3
fi
exit
}
