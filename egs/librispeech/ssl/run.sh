#!/usr/bin/env bash
# Pretrain an SSL encoder on a local LibriSpeech copy (nothing is downloaded).
# Usage:
#   bash egs/librispeech/ssl/run.sh --corpus /data/LibriSpeech [--config ../../../recipes/pretrain/apc.yaml]
#       [--train_subsets "train-clean-100 train-clean-360"] [--valid_subset dev-clean] [--exp exp/apc]
#       [--overrides "train.max_steps=100000 optim.lr=2e-4"]
#   Multi-GPU / multi-node:  --launcher torchrun --ngpu 8 [--nnodes 2 --master_addr node01]
#                            --launcher slurm --ngpu 8 --nnodes 4   (inside salloc/sbatch)
# Stages: 1 manifests per subset, 2 training/validation manifests, 3 pretrain, 4 feature extraction of dev.
set -euo pipefail
cd "$(dirname "$0")"
corpus=
config=../../../recipes/pretrain/apc.yaml
train_subsets=train-clean-100
valid_subset=dev-clean
exp=exp/apc
overrides=
min_seconds=0.5
. ../../common.sh
[ -n "$corpus" ] || die "--corpus /path/to/LibriSpeech is required"

if begin_stage 1 "LibriSpeech manifests"; then
  # shellcheck disable=SC2086
  speechssl corpus librispeech "$corpus" --out data/manifests --subsets $train_subsets $valid_subset \
    --min-seconds "$min_seconds"
  done_stage 1
fi

if begin_stage 2 "training and validation manifests"; then
  train_lists=()
  for s in $train_subsets; do train_lists+=("data/manifests/$s.jsonl"); done
  speechssl manifest merge "${train_lists[@]}" --out data/train.jsonl
  speechssl manifest merge "data/manifests/$valid_subset.jsonl" --out data/dev.jsonl
  speechssl manifest info data/train.jsonl
  done_stage 2
fi

if begin_stage 3 "pretrain with $config (rerun to resume)"; then
  # shellcheck disable=SC2086
  pretrain --config "$config" --train data/train.jsonl --valid data/dev.jsonl --exp "$exp" $overrides
  done_stage 3
fi

if begin_stage 4 "extract dev features from $exp/encoder"; then
  speechssl extract --encoder "$exp/encoder" --input data/dev.jsonl --layers all --out "$exp/feats_dev" --format npy
  done_stage 4
fi
log "done: encoder in $(abs_path "$exp/encoder")"
