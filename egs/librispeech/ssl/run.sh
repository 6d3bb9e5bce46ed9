#!/usr/bin/env bash
# Pretrain an SSL encoder on a local LibriSpeech copy (nothing is downloaded).
# Usage:
#   bash egs/librispeech/ssl/run.sh --corpus /data/LibriSpeech [--config ../../../recipes/pretrain/apc.yaml]
#       [--train_subsets "train-clean-100 train-clean-360"] [--valid_subset dev-clean] [--exp exp/apc]
#       [--overrides "train.max_steps=100000 optim.lr=2e-4"]
#   Multi-GPU / multi-node:  --launcher torchrun --ngpu 8 [--nnodes 2 --master_addr node01]
#                            --launcher slurm --ngpu 8 --nnodes 4   (inside salloc/sbatch)
# Stages: 1 manifests per subset, 2 training/validation manifests, 3 pretrain, 4 feature extraction of dev.
#
# HuBERT, both iterations as stages (--hubert true; --config defaults to hubert_base.yaml):
#   bash egs/librispeech/ssl/run.sh --corpus /data/LibriSpeech --hubert true [--launcher torchrun --ngpu 8]
#   3 k-means of 39-dim MFCC (--k1 100, on --sample_hours of train) and 100 Hz labels of train + dev,
#   4 pretrain iteration 1 on them ($exp_it1), 5 k-means of iteration 1's --it2_layer (--k2 500) and
#   50 Hz labels, 6 pretrain iteration 2 ($exp), 7 feature extraction of dev.
#   Labels carry their k-means hash: a stage that would mix targets of two k-means stops with the reason.
{ # bash reads the whole block before it runs: an edit of this file does not reach a run under way
set -euo pipefail
cd "$(dirname "$0")"
corpus=
config=../../../recipes/pretrain/apc.yaml
train_subsets=train-clean-100
valid_subset=dev-clean
exp=exp/apc
overrides=
min_seconds=0.5
hubert=false           # true: stages 3-6 are HuBERT's two iterations (targets + pretraining each)
k1=100                 # iteration 1: k-means clusters of MFCC (fairseq: 100)
k2=500                 # iteration 2: k-means clusters of iteration 1's --it2_layer (fairseq: 500)
it2_layer=layer_6      # HuBERT Base: the 6th of 12 blocks
it2_label_shift=320    # iteration 2 labels come at the model's frame rate (samples; Base: 20 ms)
sample_hours=10        # bounded k-means sample (fairseq fits on a 10 % subset of the 960 h)
n_init=20              # k-means++ restarts (fairseq default)
exp_it1=
. ../../common.sh
[ -n "$corpus" ] || die "--corpus /path/to/LibriSpeech is required"
if [ "$hubert" = true ]; then
  [ "$config" = ../../../recipes/pretrain/apc.yaml ] && config=../../../recipes/pretrain/hubert_base.yaml
  [ "$exp" = exp/apc ] && exp=exp/hubert
  [ -n "$exp_it1" ] || exp_it1=${exp}_it1
fi

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

hubert_targets() {  # hubert_targets FEATURES LAYER K OUT: k-means, then labels of train and dev
  local features=$1 layer=$2 k=$3 out=$4
  speechssl targets kmeans --features "$features" --layer "$layer" --train data/train.jsonl --k "$k" \
    --sample-hours "$sample_hours" --n-init "$n_init" --out "$out/kmeans"
  for m in data/train.jsonl data/dev.jsonl; do
    launch targets assign --kmeans "$out/kmeans" --input "$m" --out "$out/labels"
  done
}

if [ "$hubert" = true ]; then
  if begin_stage 3 "HuBERT iteration 1 targets: k-means (K=$k1) of MFCC, labels of train and dev"; then
    hubert_targets mfcc features "$k1" "$exp_it1/targets"
    done_stage 3
  fi
  if begin_stage 4 "HuBERT iteration 1: pretrain with $config on MFCC targets (rerun to resume)"; then
    # shellcheck disable=SC2086
    pretrain --config "$config" --train data/train.jsonl --valid data/dev.jsonl --exp "$exp_it1" \
      "data.targets=[$exp_it1/targets/labels]" "model.num_classes=[$k1]" "model.label_frame_shifts=[160]" $overrides
    done_stage 4
  fi
  if begin_stage 5 "HuBERT iteration 2 targets: k-means (K=$k2) of iteration 1's $it2_layer, labels of train and dev"; then
    hubert_targets "$exp_it1/encoder" "$it2_layer" "$k2" "$exp/targets"
    done_stage 5
  fi
  if begin_stage 6 "HuBERT iteration 2: pretrain with $config on iteration 1's clusters (rerun to resume)"; then
    # shellcheck disable=SC2086
    pretrain --config "$config" --train data/train.jsonl --valid data/dev.jsonl --exp "$exp" \
      "data.targets=[$exp/targets/labels]" "model.num_classes=[$k2]" "model.label_frame_shifts=[$it2_label_shift]" \
      $overrides
    done_stage 6
  fi
  extract_stage=7
else
  if begin_stage 3 "pretrain with $config (rerun to resume)"; then
    # shellcheck disable=SC2086
    pretrain --config "$config" --train data/train.jsonl --valid data/dev.jsonl --exp "$exp" $overrides
    done_stage 3
  fi
  extract_stage=4
fi

if begin_stage "$extract_stage" "extract dev features from $exp/encoder"; then
  speechssl extract --encoder "$exp/encoder" --input data/dev.jsonl --layers all --out "$exp/feats_dev" --format npy
  done_stage "$extract_stage"
fi
if [ -f "$exp/encoder/config.json" ]; then
  log "done: encoder in $(abs_path "$exp/encoder")"
else  # e.g. --stop_stage before pretraining
  log "done (stages $stage-$stop_stage); no encoder yet: pretraining writes it to $(abs_path "$exp/encoder")"
fi
exit
}
