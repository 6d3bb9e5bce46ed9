#!/usr/bin/env bash
# The demo: what self-supervised pretraining buys when labels are scarce, on the built-in
# synthetic speech corpus (nothing is downloaded).
# Usage:
#   bash egs/synthetic/ssl/run.sh            # full size (make demo), about 12 minutes on 2 CPU cores
#   bash egs/synthetic/ssl/run.sh --models all --exp_dir exp_all   # every family (make demo-all)
#   bash egs/synthetic/ssl/run.sh --quick    # CI size: every stage runs, nothing is claimed
#   bash egs/synthetic/ssl/run.sh --seeds 30   # the evaluation again with other options: a stage reruns
#     (and every later one) when an option it reads changed (stage_uses below); with the same options
#     delete exp/.stages/stage5.done to redo it; finished head runs are reused either way
# Stages:
#   1 synthesise an unlabelled pool (sentences + isolated words) and separate labelled sets of sentences
#     and of words (espeak-ng if installed, else formant)
#   2 manifests and splits (pretraining train/dev; labelled pool/test: sentences split by utterance for
#     speaker ID, words split by speaker so that the word task's test speakers are unseen in its labels)
#   3 pretrain APC, CPC and a tiny wav2vec 2.0 on the unlabelled pool, plus random-init copies (a family
#     with local/pretrain_<family>.sh runs it instead: HuBERT fits k-means targets and runs 2 iterations)
#   4 extract features of the labelled sets with every encoder
#   5 speaker-ID, style (emotion proxy) and spoken-word (keyword spotting, 20 words) label-efficiency
#     curves for every encoder + logmel/fbank
#   6 exp/summary.md and exp/summary.png
{ # bash reads the whole block before it runs: an edit of this file does not reach a run under way
set -euo pipefail
cd "$(dirname "$0")"
quick=false
backend=auto
speakers=16            # speaker-ID classes
pool_utts=100          # unlabelled utterances per speaker for pretraining
labelled_utts=40       # labelled utterances per speaker (half pool for the few labels, half test)
# Words: 1 s clips, utterance u of speaker k says word (u + k) mod 20 (speechssl.corpora.words).
pool_word_utts=20      # unlabelled word clips per speaker in the pretraining pool (each word once)
word_utts=40           # labelled word clips per speaker (each word twice); half the speakers label, half test
pretrain_steps=recipe  # per model (cosine schedule length): recipe = its recipe's train.max_steps (1,000;
                       #   6,000 for wav2vec 2.0, BEST-RQ and HuBERT's iteration 1, whose iteration 2 takes half); a number
                       #   sets every model's (HuBERT: iteration 1's)
pretrain_minutes=recipe  # per model, a hard stop whatever the step: recipe = its recipe's train.max_minutes
                       #   (6 per 1,000 steps; 1,000 steps take 1.3-4 min idle); a number sets every model's
models="apc cpc wav2vec2"  # or "all": every family with a recipes/pretrain/<family>_demo.yaml
exp_dir=exp            # experiments, features and the summary go here (data/ is shared)
shots=2,8               # labelled utterances per class (the curve; n=2 is the verdict)
seeds=20               # labelled subsets (and head inits) per shot: the verdict's paired t-test needs them;
                       #   with 5, margins of 2-3 points were within noise and some 0-1 point 'wins' were luck
seed=0                 # pretraining seed (inits, masks, k-means) of stage 3; the corpus keeps corpus_seed, so
                       #   a pretraining-seed check (--seed 1 --exp_dir exp_seed1) leaves the shared data/ as it was
corpus_seed=0          # the synthetic corpus and its splits (stages 1-2; data/ is shared by every --exp_dir)
parallel=2             # jobs at a time in stages 3-5, one thread each (2 cores)
kernels=portable       # portable: every x86-64 CPU with AVX2 computes as an AVX2 one (common.sh cpu_kernels), so
                       #   an AVX-512 CPU gives the README's table to the digit; native: this CPU's fastest kernels
                       #   (on an AVX-512 CPU the trained rows move, and the verdict with them: README "On another CPU")
pretrain_opts=         # extra options of local/pretrain_<family>.sh, HuBERT: --pretrain_opts="--it2_targets layer+it1"
                       #   (quotes group words: --pretrain_opts="--it2_overrides 'optim.lr=5e-5 model.final_dim=16'")
. ../../common.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cpu_kernels "$kernels"
markers=$exp_dir/.stages
recipes=../../../recipes
if [ "$models" = all ]; then
  models=$(for f in "$recipes"/pretrain/*_demo.yaml; do basename "$f" _demo.yaml; done | tr '\n' ' ')
fi

if [ "$quick" = true ]; then
  speakers=8; pool_utts=30; labelled_utts=16; pool_word_utts=10; word_utts=20; pretrain_steps=80
  pretrain_minutes=0.35; shots=1,4; seeds=2
fi
log "demo: $speakers speakers, $pool_utts + $pool_word_utts unlabelled and $labelled_utts + $word_utts labelled" \
  "utterances (sentences + words) each; models: $models"

# What each stage reads (its marker records these; a change redoes it and every later stage):
# (stages 1-2 read corpus_seed; markers written when they read seed keep counting as done: an option only one
# side knows is not compared)
stage_uses 1 quick backend speakers pool_utts labelled_utts pool_word_utts word_utts corpus_seed
stage_uses 2 corpus_seed
# The recipes' settings (not their comments) count as stage inputs too: editing one redoes its stage.
pretrain_recipes=$(settings_sums $(for m in $models; do echo "$recipes/pretrain/${m}_demo.yaml"; done))
downstream_recipe=$(settings_sums "$recipes/downstream/demo.yaml")
stage_uses 3 models pretrain_steps pretrain_minutes pretrain_opts seed pretrain_recipes kernels
stage_uses 4 models kernels
stage_uses 5 models shots seeds downstream_recipe kernels
stage_uses 6

if begin_stage 1 "synthesise the corpus (backend $backend)"; then
  speechssl synth --backend "$backend" --out data/pool --speakers "$speakers" --utts-per-speaker "$pool_utts" \
    --seed $((corpus_seed + 1)) --jobs 2
  speechssl synth --backend "$backend" --out data/labelled --speakers "$speakers" \
    --utts-per-speaker "$labelled_utts" --seed $((corpus_seed + 2)) --jobs 2
  # Isolated words: other recordings (seeds) of the same voices, unlabelled for pretraining, labelled for the task.
  speechssl synth --backend "$backend" --task words --out data/pool_words --speakers "$speakers" \
    --utts-per-speaker "$pool_word_utts" --seed $((corpus_seed + 1)) --jobs 2
  speechssl synth --backend "$backend" --task words --out data/words --speakers "$speakers" \
    --utts-per-speaker "$word_utts" --seed $((corpus_seed + 2)) --jobs 2
  done_stage 1
fi

if begin_stage 2 "manifests and splits"; then
  speechssl manifest merge data/pool/manifest.jsonl data/pool_words/manifest.jsonl --out data/pretrain/all.jsonl
  speechssl manifest split data/pretrain/all.jsonl --out-dir data/pretrain --fractions train=0.95,dev=0.05 --seed "$corpus_seed"
  speechssl manifest split data/labelled/manifest.jsonl --out-dir data/labelled --fractions pool=0.5,test=0.5 --seed "$corpus_seed"
  speechssl manifest info data/labelled/pool.jsonl
  # Speaker-independent: no speaker of words/test is in words/pool (speaker ID needs the opposite).
  speechssl manifest split data/words/manifest.jsonl --out-dir data/words --fractions pool=0.5,test=0.5 \
    --group-by speaker --seed "$corpus_seed"
  speechssl manifest merge data/labelled/manifest.jsonl data/words/manifest.jsonl --out data/extract.jsonl
  done_stage 2
fi

# --pretrain_opts as words with quotes honoured (xargs): "--it2_overrides 'a=1 b=2'" is two words.
pretrain_args=()
if [ -n "$pretrain_opts" ]; then
  words=$(xargs printf '%s\n' <<< "$pretrain_opts") || die "--pretrain_opts: unbalanced quotes in: $pretrain_opts"
  mapfile -t pretrain_args <<< "$words"
fi

# run_folder DIR SETTINGS: DIR holds a run of the recipe whose settings are SETTINGS (settings_sums). A run
# folder of other settings is moved aside to $exp_dir/.before/NAME-<UTC time> (nothing is lost), so the run
# starts afresh instead of resuming it with the new settings; a folder from before this record resumes.
run_folder() {
  local dir=$1 settings=$2 was= aside
  [ ! -f "$dir/.recipe_settings" ] || was=$(cat "$dir/.recipe_settings")
  if [ -n "$was" ] && [ "$was" != "$settings" ]; then
    aside="$exp_dir/.before/${dir##*/}-$(date -u +%Y%m%d-%H%M%S)"
    mkdir -p "$exp_dir/.before"
    mv "$dir" "$aside"
    log "${dir##*/}: its recipe changed since that run ($was -> $settings): moved to $aside, training afresh"
  fi
  mkdir -p "$dir"
  echo "$settings" > "$dir/.recipe_settings"
}

pretrain_model() {
  local m=$1 settings item  # $limits: stage 3's train_limits
  for item in ${pretrain_recipes//,/ }; do [ "${item%%=*}" != "${m}_demo.yaml" ] || settings=$item; done
  if [ -f "local/pretrain_$m.sh" ]; then  # a family that needs more than one call (HuBERT: targets, 2 iterations)
    bash "local/pretrain_$m.sh" --exp_dir "$exp_dir" --pretrain_steps "$pretrain_steps" \
      --pretrain_minutes "$pretrain_minutes" --seed "$seed" --launcher "$launcher" --ngpu "$ngpu" "${pretrain_args[@]}"
  else
    run_folder "$exp_dir/$m" "$settings"
    pretrain --config "$recipes/pretrain/${m}_demo.yaml" --train data/pretrain/train.jsonl \
      --valid data/pretrain/dev.jsonl --exp "$exp_dir/$m" ${limits[@]+"${limits[@]}"} "train.seed=$seed"
  fi
  # The control: the same architecture and seed, released untrained (max_steps=0); its config.json
  # says role "control" and control_of "$m", which the summary reads (folder names are free).
  run_folder "$exp_dir/${m}_random" "$settings"
  speechssl pretrain --config "$recipes/pretrain/${m}_demo.yaml" --train data/pretrain/train.jsonl \
    --exp "$exp_dir/${m}_random" train.max_steps=0 "train.seed=$seed" "train.control_of=$m"
}

if begin_stage 3 "pretrain $models ($parallel at a time; steps: $pretrain_steps, minutes at most: $pretrain_minutes) and random-init controls"; then
  train_limits "$pretrain_steps" "$pretrain_minutes"  # sets $limits; a bad value stops here, before any job
  for m in $models; do [ -f "$recipes/pretrain/${m}_demo.yaml" ] || die "--models $m: no $recipes/pretrain/${m}_demo.yaml"; done
  for m in $models; do spawn pretrain_model "$m"; done
  wait_spawned
  done_stage 3
fi

encoders="logmel fbank"
for m in $models; do
  encoders="$encoders $exp_dir/$m/encoder $exp_dir/${m}_random/encoder"
  [ -f "$exp_dir/$m.encoders" ] && encoders="$encoders $(cat "$exp_dir/$m.encoders")"  # e.g. hubert_it1
done

if begin_stage 4 "extract features of the labelled sets"; then
  for enc in $encoders; do
    spawn speechssl extract --encoder "$enc" --input data/extract.jsonl --layers all \
      --out "$exp_dir/feats/$(encoder_name "$enc")" --format npy --no-progress
  done
  wait_spawned
  done_stage 4
fi

if begin_stage 5 "label-efficiency curves (shots $shots, $seeds seeds)"; then
  features=
  for enc in $encoders; do
    name=$(encoder_name "$enc")
    features="${features:+$features,}$name=$exp_dir/feats/$name"
  done
  for task in speaker style word; do
    sets=data/labelled; [ "$task" = word ] && sets=data/words
    # Features come from stage 4 (NAME=$exp_dir/feats/NAME): every encoder ran once over the labelled sets.
    spawn speechssl downstream label-efficiency --encoders "$features" --train "$sets/pool.jsonl" \
      --test "$sets/test.jsonl" --label "$task" --shots "$shots" --seeds "$seeds" \
      --config "$recipes/downstream/demo.yaml" --out "$exp_dir/le_$task" --quiet
  done
  wait_spawned
  done_stage 5
fi

if begin_stage 6 "summary"; then
  # `downstream summary` prints the summary itself
  speechssl downstream summary speaker=$exp_dir/le_speaker style=$exp_dir/le_style word=$exp_dir/le_word --out $exp_dir/summary.md --png $exp_dir/summary.png \
    --note "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc --all) CPU cores ($(uname -m)); $( [ "$quick" = true ] && echo "quick size: every model pretrains for seconds, so this run checks the pipeline; run without --quick (make demo) for the comparison" || echo "full size" )."
  done_stage 6
fi
log "done: $(abs_path "$exp_dir/summary.md")"
exit
}
