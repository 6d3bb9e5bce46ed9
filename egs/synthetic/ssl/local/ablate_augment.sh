#!/usr/bin/env bash
# What makes an augmentation good (issue 18): SimCLR of recipes/pretrain/simclr_demo.yaml pretrained once
# per variant, each with one augmentation group (or the MoCo queue) taken out, all with the same steps,
# seed and data, then evaluated together by the demo protocol (label-efficiency, n=$shots, $seeds seeds)
# on speaker, style and word, next to log-Mel and the random-init control. One invocation measures
# every row, so the rows share the machine's state, the data and the evaluation seeds.
# Usage (from egs/synthetic/ssl, after run.sh stages 1-2 made data/):
#   bash local/ablate_augment.sh --exp_dir exp_ablate --steps 500   # --parallel 1: one variant at a time
# Writes: $exp_dir/<variant> (pretraining), $exp_dir/feats/*, $exp_dir/le_{speaker,style,word} and
#   $out/ABLATION.md (table: mean ± std and the change vs the full recipe), $out/ABLATION.json, $out/ABLATION.png.
# Reruns skip the variants, features and evaluations already done (.done markers in $exp_dir).
{ # bash reads the whole block before it runs: an edit of this file does not reach a run under way
set -euo pipefail
cd "$(dirname "$0")/.."
exp_dir=exp_ablate
steps=200               # pretraining steps of every variant (cosine schedule length; no time limit)
seed=0
shots=2
seeds=20                # evaluation seeds (the demo's: with 5, margins of 2-3 points were within noise)
parallel=2              # variants pretrained at a time, one thread each (2 cores)
variants=all            # or a comma-separated subset of the names below
out=.                   # ABLATION.md / .json / .png go here
recipes=../../../recipes
. ../../common.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
recipe=$recipes/pretrain/simclr_demo.yaml

# name|description|overrides of the recipe (space-separated key=value)
wave=model.augment.waveform
spec=model.augment.spectrogram
all_variants=(
  "full|the recipe (every group, MoCo queue of 64 momentum keys)|"
  "no_noise|without additive noise|$wave.noise=null"
  "no_channel|without the channel group (random EQ, band-limit, gain)|$wave.eq=null $wave.band_limit=null $wave.gain=null"
  "no_mixup|without mixup|$spec.mixup=null"
  "no_masks|without SpecAugment masks|$spec.freq_mask=null $spec.time_mask=null"
  "cola_crops|COLA's positives: two 0.96 s crops of a 2 s training crop (not one 1 s crop augmented twice)|model.crop_seconds=0.96 data.crop_seconds=2.0 data.max_batch_seconds=32.0"
  "queue_0|no queue (batch negatives only, no momentum encoder)|model.queue_size=0 model.momentum=null"
  "queue_1024|MoCo queue of 1024 momentum keys (64 batches) in the NT-Xent|model.queue_size=1024 model.momentum=0.99 model.momentum_loss=simclr"
)

selected=()
for v in "${all_variants[@]}"; do
  name=${v%%|*}
  if [ "$variants" = all ] || [[ ",$variants," == *",$name,"* ]]; then selected+=("$v"); fi
done
[ ${#selected[@]} -gt 0 ] || die "--variants $variants: none of $(printf '%s ' "${all_variants[@]%%|*}")"
[ -f data/pretrain/train.jsonl ] || die "no data/pretrain/train.jsonl: run 'bash run.sh --stop_stage 2' first"
mkdir -p "$exp_dir"

log "ablation: ${#selected[@]} variants of $recipe, $steps steps each, seed $seed"
: > "$exp_dir/variants.tsv"
variant() {  # variant NAME OVERRIDES: pretrain and extract once
  local name=$1 overrides=$2
  log "pretrain $name: ${overrides:-(no override)}"
  rm -rf "${exp_dir:?}/$name"
  # shellcheck disable=SC2086  # the overrides are separate words
  speechssl pretrain --config "$recipe" --train data/pretrain/train.jsonl --exp "$exp_dir/$name" \
    "train.max_steps=$steps" train.max_minutes=1000 "train.seed=$seed" "train.probe.labels=[]" $overrides
  speechssl extract --encoder "$exp_dir/$name/encoder" --input data/extract.jsonl --layers all \
    --out "$exp_dir/feats/$name" --format npy --no-progress
  touch "$exp_dir/.$name.done"
}
for v in "${selected[@]}"; do
  IFS='|' read -r name desc overrides <<< "$v"
  printf '%s\t%s\t%s\n' "$name" "$desc" "$overrides" >> "$exp_dir/variants.tsv"
  [ -f "$exp_dir/.$name.done" ] || spawn variant "$name" "$overrides"
done
wait_spawned
if [ ! -f "$exp_dir/.control.done" ]; then
  log "random-init control and log-Mel features"
  speechssl pretrain --config "$recipe" --train data/pretrain/train.jsonl --exp "$exp_dir/simclr_random" \
    train.max_steps=0 "train.seed=$seed" train.control_of=simclr "train.probe.labels=[]"
  speechssl extract --encoder "$exp_dir/simclr_random/encoder" --input data/extract.jsonl --layers all \
    --out "$exp_dir/feats/simclr_random" --format npy --no-progress
  speechssl extract --encoder logmel --input data/extract.jsonl --layers all \
    --out "$exp_dir/feats/logmel" --format npy --no-progress
  touch "$exp_dir/.control.done"
fi

features=logmel=$exp_dir/feats/logmel,simclr_random=$exp_dir/feats/simclr_random
while IFS=$'\t' read -r name _ _; do features="$features,$name=$exp_dir/feats/$name"; done < "$exp_dir/variants.tsv"
for task in speaker style word; do
  sets=data/labelled; [ "$task" = word ] && sets=data/words
  log "label-efficiency: $task"
  speechssl downstream label-efficiency --encoders "$features" --train "$sets/pool.jsonl" \
    --test "$sets/test.jsonl" --label "$task" --shots "$shots" --seeds "$seeds" \
    --config "$recipes/downstream/demo.yaml" --out "$exp_dir/le_$task" --quiet
done

python local/ablation_table.py --exp_dir "$exp_dir" --variants "$exp_dir/variants.tsv" --shots "$shots" \
  --steps "$steps" --out "$out/ABLATION" \
  --note "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc --all) CPU cores ($(uname -m), $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $steps pretraining steps per variant, seed $seed; $seeds evaluation seeds."
log "done: $(abs_path "$out/ABLATION.md")"
exit
}
