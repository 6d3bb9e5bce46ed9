#!/usr/bin/env bash
# SUPERB emotion recognition on a local IEMOCAP copy: 4 classes, leave-one-session-out 5-fold.
# Usage:
#   bash egs/iemocap/er/run.sh --corpus /data/IEMOCAP_full_release \
#       --encoders "logmel ../../librispeech/ssl/exp/apc/encoder" [--config ../../../recipes/downstream/emotion.yaml]
#       [--overrides "train.max_steps=30000"]
# Stages: 1 manifests, 2 k-fold training per encoder, 3 comparison table.
{ # bash reads the whole block before it runs: an edit of this file does not reach a run under way
set -euo pipefail
cd "$(dirname "$0")"
corpus=
encoders="logmel fbank"
config=../../../recipes/downstream/emotion.yaml
overrides=
. ../../common.sh
[ -n "$corpus" ] || die "--corpus /path/to/IEMOCAP_full_release is required"

if begin_stage 1 "IEMOCAP manifests (neutral, happy+excited, angry, sad; folds by session)"; then
  speechssl corpus iemocap "$corpus" --out data
  speechssl manifest info data/all.jsonl
  done_stage 1
fi

if begin_stage 2 "leave-one-session-out training for: $encoders"; then
  for enc in $encoders; do
    # shellcheck disable=SC2086
    speechssl downstream kfold --encoder "$enc" --data data/all.jsonl --label emotion --group session \
      --config "$config" --exp "exp/er_$(encoder_name "$enc")" $overrides
  done
  done_stage 2
fi

if begin_stage 3 "comparison"; then
  compare_encoders "er_"
  done_stage 3
fi
exit
}
