#!/usr/bin/env bash
# HuBERT's two iterations for the demo (run.sh stage 3 calls local/pretrain_<family>.sh when it exists,
# instead of one `speechssl pretrain`). Every step is a speechssl call; reruns skip finished steps (.done
# markers record each step's settings: a rerun with other ones stops and names them).
# Usage (from egs/synthetic/ssl, after stages 1-2):
#   bash local/pretrain_hubert.sh --exp_dir exp --seed 0   # --pretrain_steps 1000 --pretrain_minutes 6: other lengths
# Writes: $exp_dir/hubert_km1 (K=500 k-means of 80-dim log-Mel, 100 Hz; --it1_features mfcc for the paper's
#   39-dim MFCC), $exp_dir/hubert_labels1, $exp_dir/hubert_it1 (iteration 1),
#   $exp_dir/hubert_km2 (K=100 k-means of iteration 1's layer_1, at iteration 1's frame rate),
#   $exp_dir/hubert_labels2, $exp_dir/hubert (iteration 2: the family's encoder), and $exp_dir/hubert.encoders
#   (extra encoders for the evaluation: iteration 1).
# Label rates (model.label_frame_shifts) come from the frame shift each k-means model was fitted on
# (kmeans.json), so iteration 2 follows iteration 1's frame rate (a conv subsampler or stack_frames).
# Iteration 2 options (defaults: the recipe as it is; hubert_demo.yaml says what each measured):
#   --it2_targets layer+it1   also predict iteration 1's K=k units (100 Hz) as a second target set
#                             (num_classes [k2, k], label_frame_shifts [it1's shift, 160]: the paper's section 4)
#   --it2_final_dim 32        iteration 2's model.final_dim (empty: the recipe's)
#   --it2_overrides "optim.lr=5e-5 model.unmasked_weight=1.0"
#                             extra recipe overrides (key=value, space-separated) of iteration 2's pretrain only;
#                             they come last, so they win over the options above
#   --it1_overrides "..."     the same for iteration 1 (iteration 2 still starts from the recipe)
#   --it2_init scratch        start iteration 2 from a random init (the paper) instead of from iteration 1's
#                             weights (the default: --init-from hubert_it1/encoder; the head's label embeddings
#                             for the new K start fresh)
#   --it2_steps N             iteration 2's steps (default half: half of iteration 1's, as it starts from them)
# From run.sh (note the =): bash run.sh --models hubert --pretrain_opts="--it2_targets layer+it1 --it2_final_dim 32"
#   (several overrides through run.sh: --pretrain_opts="--it2_overrides 'optim.lr=5e-5 model.final_dim=16'")
{ # bash reads the whole block before it runs: an edit of this file does not reach a run under way
set -euo pipefail
exp_dir=exp
pretrain_steps=recipe   # iteration 1's; recipe: hubert_demo.yaml's train.max_steps (6,000)
pretrain_minutes=recipe # per iteration, a hard stop; recipe: hubert_demo.yaml's train.max_minutes
it2_steps=half          # iteration 2's: half of iteration 1's (it starts from them), or a number
seed=0
k=500                   # iteration 1's clusters (model.num_classes=[k]; hubert_demo.yaml's 500)
k2=100                  # iteration 2's clusters (model.num_classes=[k2]; 500 measured in hubert_demo.yaml)
it1_features=logmel     # iteration 1 clusters these frames (hubert_demo.yaml says what each measured)
sample_hours=0.3        # bounded k-means sample (the pool has about 1.3 h)
n_init=3                # k-means++ restarts (fairseq: 20; 3 keeps the demo's k-means under 2 minutes)
layer=layer_1           # iteration 2 clusters this layer of iteration 1 (HuBERT Base: layer 6 of 12; layer_2 measured)
it2_targets=layer       # layer: iteration 2's units only; layer+it1: + iteration 1's units as a second target set
it2_final_dim=          # iteration 2's model.final_dim (empty: the recipe's)
it1_overrides=          # extra key=value overrides of iteration 1's pretrain (space-separated)
it2_overrides=          # extra key=value overrides of iteration 2's pretrain (space-separated)
it2_init=it1            # it1: iteration 2 from iteration 1's weights; scratch: from a random init (the paper)
recipes=../../../recipes
. ../../common.sh
recipe=$recipes/pretrain/hubert_demo.yaml
train=data/pretrain/train.jsonl
case "$it2_targets" in layer | layer+it1) ;; *) die "--it2_targets $it2_targets: layer or layer+it1" ;; esac
case "$it2_init" in scratch | it1) ;; *) die "--it2_init $it2_init: scratch or it1" ;; esac
valid=data/pretrain/dev.jsonl
train_limits "$pretrain_steps" "$pretrain_minutes"  # checks both values
limits1=(${limits[@]+"${limits[@]}"})
# one read of the recipe: its settings' checksum (for the step markers below: the recipe's settings, not
# its bytes, so an edited comment does not count as another recipe) and its train.max_steps
read -r recipe_sum recipe_steps < <(python -c 'import hashlib, json, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
print(hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16], cfg["train"]["max_steps"])' "$recipe")
[ -n "${recipe_steps:-}" ] || die "cannot read train.max_steps of $recipe (its error is above)"
it1_steps=$pretrain_steps
if [ "$it1_steps" = recipe ]; then it1_steps=$recipe_steps; fi
if [ "$it2_steps" = half ]; then it2_steps=$(( (it1_steps + 1) / 2 )); fi
[[ "$it2_steps" =~ ^[0-9]+$ ]] || die "--it2_steps $it2_steps: a whole number of steps or half"
train_limits "$it2_steps" "$pretrain_minutes"
limits2=(${limits[@]+"${limits[@]}"})
read -ra it1_extra <<< "$it1_overrides"
read -ra it2_extra <<< "$it2_overrides"
for o in "${it1_extra[@]}" "${it2_extra[@]}"; do
  case "$o" in ?*=*) ;; *) die "--it1_overrides/--it2_overrides: '$o' is not key=value (e.g. optim.lr=5e-5)" ;; esac
done

# Each step's marker ($exp_dir/.hubert_NAME.done) records what it ran with, including the step it
# builds on and a checksum of the recipe's settings: a rerun with the same settings skips it; with other
# settings it stops and names them, instead of silently reusing results made with the old ones
# (--pretrain_minutes is a hard stop, not a setting: it is not recorded).
done_before() {  # done_before NAME SIGNATURE: true when step NAME finished with these settings
  local marker="$exp_dir/.hubert_$1.done"
  [ -f "$marker" ] || return 1
  if [ ! -s "$marker" ]; then
    log "hubert step $1: done (its marker predates recorded settings; delete $marker to redo)"; return 0
  fi
  [ "$(cat "$marker")" = "$2" ] && return 0
  die "hubert step $1 in $exp_dir ran with other settings ($(diff <(cat "$marker") <(printf '%s\n' "$2") |
    sed -n 's/^< /was: /p; s/^> /now: /p' | paste -sd ';' -)); use another --exp_dir, or delete $exp_dir/.hubert_*.done and the outputs of this step and the later ones to redo them"
}
mark_done() { printf '%s\n' "$2" > "$exp_dir/.hubert_$1.done.tmp" && mv -f "$exp_dir/.hubert_$1.done.tmp" "$exp_dir/.hubert_$1.done"; }

targets() {  # targets FEATURES LAYER NAME K SIGNATURE: k-means + labels of train and dev, once
  local features=$1 lay=$2 name=$3 k=$4 sig=$5
  done_before "$name" "$sig" && return 0
  speechssl targets kmeans --features "$features" --layer "$lay" --train "$train" --k "$k" \
    --sample-hours "$sample_hours" --n-init "$n_init" --seed "$seed" --out "$exp_dir/hubert_km$name"
  for m in "$train" "$valid"; do
    speechssl targets assign --kmeans "$exp_dir/hubert_km$name" --input "$m" --out "$exp_dir/hubert_labels$name" \
      --report-labels speaker,style
  done
  mark_done "$name" "$sig"
}

label_shift() {  # label_shift NAME: frame shift (samples) of the features k-means NAME was fitted on
  python -c 'import json, sys; print(json.load(open(sys.argv[1]))["features"]["frame_shift"])' \
    "$exp_dir/hubert_km$1/kmeans.json"
}

iteration() {  # iteration NAME EXP SIGNATURE [--init-from DIR] OVERRIDES...: pretrain once
  local name=$1 exp=$2 sig=$3 init=(); shift 3  # (once: a rerun would train on past max_minutes)
  if [ "${1:-}" = --init-from ]; then init=("$1" "$2"); shift 2; fi  # before the overrides (argparse)
  done_before "$name" "$sig" && return 0
  pretrain --config "$recipe" --train "$train" --valid "$valid" --exp "$exp" ${init[@]+"${init[@]}"} \
    "train.seed=$seed" "$@"
  mark_done "$name" "$sig"
}

log "hubert iteration 1: $it1_features k-means (K=$k) -> pretrain"
sig_1="k-means 1: it1_features=$it1_features k=$k sample_hours=$sample_hours n_init=$n_init seed=$seed"
targets "$it1_features" features 1 "$k" "$sig_1"
shift1=$(label_shift 1)
sig_it1="$sig_1"$'\n'"iteration 1: recipe $recipe_sum pretrain_steps=$pretrain_steps it1_overrides=$it1_overrides"
iteration it1 "$exp_dir/hubert_it1" "$sig_it1" ${limits1[@]+"${limits1[@]}"} "data.targets=[$exp_dir/hubert_labels1]" "model.num_classes=[$k]" \
  "model.label_frame_shifts=[$shift1]" "${it1_extra[@]}"
log "hubert iteration 2: k-means (K=$k2) of iteration 1's $layer -> pretrain"
sig_2="$sig_it1"$'\n'"k-means 2: layer=$layer k2=$k2"
targets "$exp_dir/hubert_it1/encoder" "$layer" 2 "$k2" "$sig_2"
shift2=$(label_shift 2)  # iteration 1's frame shift (20 ms with the conv subsampler, 40 ms with 4 stacked frames)
case "$it2_targets" in
  layer) it2=("data.targets=[$exp_dir/hubert_labels2]" "model.label_frame_shifts=[$shift2]" "model.num_classes=[$k2]") ;;
  layer+it1) it2=("data.targets=[$exp_dir/hubert_labels2,$exp_dir/hubert_labels1]"
                  "model.label_frame_shifts=[$shift2,$shift1]" "model.num_classes=[$k2,$k]") ;;
esac
if [ -n "$it2_final_dim" ]; then it2+=("model.final_dim=$it2_final_dim"); fi
init=(); if [ "$it2_init" = it1 ]; then init=(--init-from "$exp_dir/hubert_it1/encoder"); fi
sig_it2="$sig_2"$'\n'"iteration 2: it2_targets=$it2_targets it2_final_dim=$it2_final_dim it2_overrides=$it2_overrides it2_init=$it2_init it2_steps=$it2_steps"
iteration it2 "$exp_dir/hubert" "$sig_it2" ${init[@]+"${init[@]}"} ${limits2[@]+"${limits2[@]}"} "${it2[@]}" \
  "${it2_extra[@]}"
echo "$exp_dir/hubert_it1/encoder" > "$exp_dir/hubert.encoders"
exit
}
