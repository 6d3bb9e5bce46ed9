#!/usr/bin/env bash
# Classify your own audio: a folder of files + a labels CSV/TSV (a path or id column, label columns).
# Usage:
#   bash egs/generic/cls/run.sh --audio /data/clips --labels /data/labels.csv --label mood \
#       [--group speaker] [--encoders "logmel exp/apc/encoder"] [--config ../../../recipes/downstream/probe.yaml]
#       [--overrides "train.max_steps=2000"]
# --group keeps every value of that field inside one split (speaker-independent evaluation).
# Stages: 1 manifest, 2 train/dev/test split, 3 training per encoder, 4 comparison, 5 predictions on test.
{ # bash reads the whole block before it runs: an edit of this file does not reach a run under way
set -euo pipefail
cd "$(dirname "$0")"
audio=
labels=
label=
group=
encoders="logmel"
config=../../../recipes/downstream/probe.yaml
fractions=train=0.7,dev=0.15,test=0.15
overrides=
. ../../common.sh
[ -n "$audio" ] && [ -n "$labels" ] && [ -n "$label" ] || die "--audio DIR, --labels FILE and --label FIELD are required"

if begin_stage 1 "manifest from $labels"; then
  speechssl corpus generic "$audio" --labels "$labels" --out data
  speechssl manifest info data/all.jsonl
  done_stage 1
fi

if begin_stage 2 "split ($fractions${group:+, grouped by $group})"; then
  speechssl manifest split data/all.jsonl --out-dir data --fractions "$fractions" ${group:+--group-by "$group"}
  done_stage 2
fi

if begin_stage 3 "training for: $encoders"; then
  for enc in $encoders; do
    # shellcheck disable=SC2086
    speechssl downstream train --encoder "$enc" --train data/train.jsonl --valid data/dev.jsonl \
      --test data/test.jsonl --label "$label" --config "$config" --exp "exp/$(encoder_name "$enc")" $overrides
  done
  done_stage 3
fi

if begin_stage 4 "comparison"; then
  compare_encoders ""
  done_stage 4
fi

if begin_stage 5 "predictions on the test split"; then
  first=$(echo "$encoders" | awk '{print $1}')
  speechssl downstream predict --model "exp/$(encoder_name "$first")" --input data/test.jsonl --out exp/test_predictions.tsv
  done_stage 5
fi
exit
}
