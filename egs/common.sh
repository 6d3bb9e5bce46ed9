# Shared by every egs/<corpus>/<task>/run.sh: option parsing, logging, stages, launchers.
# Source it after setting defaults of the recipe's own options:
#   . "$(dirname "$0")/../../common.sh"
# Every variable that already has a value can be overridden as --name value (or --name=value).
# Common options: --stage N --stop_stage N (run stages N..M), --ngpu N (processes per node),
# --nnodes N, --launcher local|torchrun|slurm, --master_addr HOST, --master_port PORT.

# The recipe's options: its lowercase, non-exported variables set before this file is sourced
# (exported lowercase names such as http_proxy are the environment's, not options).
_recipe_opts=$(comm -23 <(compgen -v | grep -E '^[a-z][a-z0-9_]*$' | sort -u) <(compgen -e | sort -u))
stage=${stage:-1}
stop_stage=${stop_stage:-100}
ngpu=${ngpu:-0}
nnodes=${nnodes:-1}
launcher=${launcher:-local}
master_addr=${master_addr:-127.0.0.1}
master_port=${master_port:-29500}
parallel=${parallel:-1}  # independent jobs of a stage run this many at a time (spawn / wait_spawned)

# Recipes cd into their own folder first, so the log prefix is <corpus>/<task> of the working folder.
recipe_name="$(basename "$(dirname "$PWD")")/$(basename "$PWD")"
log() { echo "[$recipe_name $(date '+%H:%M:%S')] $*" >&2; }
# An absolute path as it is, a relative one under the recipe folder (for messages).
abs_path() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
die() { log "error: $*"; exit 1; }

# --name value / --name=value for every variable that already exists; flags without a value
# (e.g. --quick) set the variable to true.
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) name=${1%%=*}; name=${name#--}; value=${1#*=}; shift ;;
    --*)
      name=${1#--}; shift
      if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then value=$1; shift; else value=true; fi ;;
    *) die "unexpected argument '$1' (options are --name value)" ;;
  esac
  name=${name//-/_}
  if ! declare -p "$name" >/dev/null 2>&1; then die "unknown option --$name"; fi
  printf -v "$name" '%s' "$value"
done

# What a stage's marker records: the options it reads when the recipe declares them
# (`stage_uses N name...` before the stage), else every recipe option except those that choose which
# stages run or how a stage runs (processes, launcher, rendezvous, jobs at a time), not what it computes;
# for an option whose value is a YAML file, also its settings' checksum (NAME.settings, see settings_sums).
# Values are read when the stage begins and ends, so a recipe's own adjustments (--quick sizes) count.
_stage_opts_ignored=" stage stop_stage ngpu nnodes launcher master_addr master_port parallel markers "
declare -A _stage_uses=()
stage_uses() {
  local n=$1 o; shift
  for o in "$@"; do declare -p "$o" >/dev/null 2>&1 || die "stage_uses $n: no option named '$o'"; done
  _stage_uses[$n]="$*"
}
_stage_opts() {
  local o names
  if [ -n "${_stage_uses[$1]+x}" ]; then names=${_stage_uses[$1]}; else names=$_recipe_opts; fi
  for o in $names; do
    case "$_stage_opts_ignored" in *" $o "*) continue ;; esac
    printf '%s=%q\n' "$o" "${!o}"
    # an option naming a YAML file (--config ...): its settings count too, so editing the file redoes the stage
    case "${!o}" in *.yaml|*.yml) [ ! -f "${!o}" ] || printf '%s.settings=%q\n' "$o" "$(settings_sums "${!o}")" ;; esac
  done
}

command -v speechssl >/dev/null 2>&1 || die "the speechssl command is not on PATH (run 'make setup' and activate .venv)"

# spawn CMD...: run CMD in the background, at most $parallel at a time; wait_spawned waits for all
# of them and stops the recipe if any failed. Each job should use one thread (OMP_NUM_THREADS=1).
_spawned=0
_spawn_failed=0
spawn() {
  if [ "$_spawned" -ge "$parallel" ]; then
    wait -n || _spawn_failed=1
    _spawned=$((_spawned - 1))
  fi
  "$@" &
  _spawned=$((_spawned + 1))
}
wait_spawned() {
  while [ "$_spawned" -gt 0 ]; do
    wait -n || _spawn_failed=1
    _spawned=$((_spawned - 1))
  done
  [ "$_spawn_failed" = 0 ] || die "a job of this stage failed (its error is above)"
}

# begin_stage N "description": true when stage N is selected and not already done. Mark it done with
# `done_stage N` at its end: the marker ($markers/stageN.done) records the options the stage ran with.
# A rerun skips a done stage unless an option differs from its marker (then it is redone, with a log
# line naming the changes). A stage that runs removes the markers of later stages: their inputs change.
# A marker from before options were recorded (an empty file) still counts as done, with a hint: which
# options that run had is unknown, and redoing a finished pretraining on a guess would cost hours.
stage_selected() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
begin_stage() {
  local n=$1; shift
  stage_selected "$n" || return 1
  local marker="$markers/stage$n.done" changes
  if [ -f "$marker" ]; then
    if [ ! -s "$marker" ]; then
      log "stage $n: $* (done, skipped; its marker predates recorded options, so changed options are not" \
        "detected: delete $marker to redo)"
      return 1
    fi
    changes=$(_stage_changes "$marker" "$n")
    if [ -z "$changes" ]; then log "stage $n: $* (done, skipped; delete $marker to redo)"; return 1; fi
    log "stage $n: options changed since it ran ($changes): redoing"
    rm -f "$marker"
  fi
  _drop_later_markers "$n"
  log "stage $n: $*"
  return 0
}
done_stage() {
  mkdir -p "$markers"
  { echo "# options stage $1 ran with (egs/common.sh; delete this file to redo the stage)"; _stage_opts "$1"; } \
    > "$markers/stage$1.done.tmp"
  mv -f "$markers/stage$1.done.tmp" "$markers/stage$1.done"
}
# "name: old -> new, ..." for the options of stage N whose value differs from MARKER's (options only
# one side knows, e.g. one a newer recipe added, are not compared). Usage: _stage_changes MARKER N
_stage_changes() {
  local -A before=()
  local line name out=
  while IFS= read -r line; do
    case "$line" in '#'*|'') continue ;; esac
    before[${line%%=*}]=${line#*=}
  done < "$1"
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    name=${line%%=*}
    if [ -n "${before[$name]+x}" ] && [ "${before[$name]}" != "${line#*=}" ]; then
      out+="${out:+, }$name: $(_value_change "${before[$name]}" "${line#*=}")"
    fi
  done <<< "$(_stage_opts "$2")"
  printf '%s' "$out"
}
# "old -> new"; for two settings_sums lists only the files that differ ("apc_demo.yaml changed,
# mae_demo.yaml added"). Usage: _value_change OLD NEW (as the marker escapes them)
_value_change() {
  local old=${1//\\,/,} new=${2//\\,/,} item out=
  local sums='^[^=, ]+=([0-9a-f]{12}|missing)(,[^=, ]+=([0-9a-f]{12}|missing))*$'
  if ! [[ "$old" =~ $sums && "$new" =~ $sums ]]; then printf '%s -> %s' "$1" "$2"; return; fi
  local -A was=() now=()
  for item in ${old//,/ }; do was[${item%%=*}]=${item#*=}; done
  for item in ${new//,/ }; do
    now[${item%%=*}]=${item#*=}
    if [ -z "${was[${item%%=*}]+x}" ]; then out+="${out:+, }${item%%=*} added"
    elif [ "${was[${item%%=*}]}" != "${item#*=}" ]; then out+="${out:+, }${item%%=*} changed"; fi
  done
  for item in ${old//,/ }; do [ -n "${now[${item%%=*}]+x}" ] || out+="${out:+, }${item%%=*} dropped"; done
  printf '%s' "$out"
}
# settings_sums FILE...: "name=checksum,..." over FILEs, a checksum of each one's settings (the parsed
# YAML: comments and layout do not count; "missing" when it does not read). A stage that reads recipe
# files records this in an option of its `stage_uses`, so editing a recipe redoes that stage.
settings_sums() {
  python - "$@" <<'PY'
import hashlib, json, sys
from pathlib import Path
import yaml
sums = []
for name in sys.argv[1:]:
    try:
        cfg = yaml.safe_load(Path(name).read_text())
        sums.append(Path(name).name + "=" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12])
    except (OSError, yaml.YAMLError):
        sums.append(Path(name).name + "=missing")
print(",".join(sums))
PY
  [ $? = 0 ] || die "settings_sums: python with PyYAML is needed to read $* (activate the speechssl venv)"
}
_drop_later_markers() {
  local f m dropped=
  for f in "$markers"/stage*.done; do
    [ -f "$f" ] || continue
    m=${f##*/stage}; m=${m%.done}
    if [[ "$m" =~ ^[0-9]+$ ]] && [ "$m" -gt "$1" ]; then rm -f "$f"; dropped+=" $m"; fi
  done
  [ -z "$dropped" ] || log "stage $1 runs, so later stages run again (markers removed:$dropped)"
}
markers=${markers:-exp/.stages}

# A short name for an encoder argument: logmel -> logmel, exp/apc/encoder -> apc, exp/apc -> apc.
# Only for folder names: what an encoder is (ssl, control, baseline) is read from its config.json.
encoder_name() {
  local n=${1%/}
  n=${n%/encoder}
  basename "$n"
}

# compare_encoders PREFIX: exp/compare.md + exp/compare.png over exp/PREFIX<name> for every $encoders.
compare_encoders() {
  local dirs=() enc
  for enc in $encoders; do dirs+=("exp/$1$(encoder_name "$enc")"); done
  speechssl downstream compare "${dirs[@]}" --out exp/compare.md --png exp/compare.png
}

# cpu_kernels portable|native: the kernels PyTorch, oneDNN, MKL and OpenBLAS take on this x86-64 CPU.
# portable: AVX2's on every CPU that has AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_CBWR=AVX2,
#   OPENBLAS_CORETYPE=Haswell; a variable already in the environment is kept), so that training and evaluation
#   give the same numbers, to the last bit, on AVX2 and AVX-512 CPUs: AVX-512 kernels sum in another order,
#   and a pretraining run then takes another path from its first step. Slower where AVX-512 would be used.
# native: each CPU's fastest kernels (nothing is set).
cpu_kernels() {
  case "$1" in
    native) return 0 ;;
    portable) ;;
    *) die "--kernels $1: portable or native" ;;
  esac
  if [ "$(uname -m)" != x86_64 ] || ! grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    log "kernels portable: not an x86-64 CPU with AVX2, nothing to pin (numbers can differ from AVX2 CPUs')"
    return 0
  fi
  export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2} \
    MKL_CBWR=${MKL_CBWR:-AVX2} OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
}

# Run `speechssl VERB ...` with the chosen launcher: pretraining, and the verbs that shard their
# input over ranks (extract, targets assign). For pretraining the effective batch (seconds of audio)
# stays the same at any world size because the Trainer derives accumulation from it.
launch() {
  local nproc=$ngpu
  [ "$nproc" -gt 0 ] || nproc=1
  case "$launcher" in
    local)
      speechssl "$@" ;;
    torchrun)
      torchrun --nnodes "$nnodes" --nproc_per_node "$nproc" --rdzv_backend c10d \
        --rdzv_endpoint "$master_addr:$master_port" -m speechssl.cli.main "$@" ;;
    slurm)
      # One task per node; torchrun starts the per-node processes. Run inside an allocation:
      #   salloc -N 2 --gpus-per-node 8 bash run.sh --launcher slurm --nnodes 2 --ngpu 8
      local head
      head=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?run inside a SLURM allocation}" | head -n 1)
      srun --nodes "$nnodes" --ntasks-per-node 1 torchrun --nnodes "$nnodes" --nproc_per_node "$nproc" \
        --rdzv_backend c10d --rdzv_endpoint "$head:$master_port" -m speechssl.cli.main "$@" ;;
    *) die "unknown launcher '$launcher' (local, torchrun, slurm)" ;;
  esac
}
pretrain() { launch pretrain "$@"; }

# train_limits STEPS MINUTES: fills the array `limits` with the overrides train.max_steps=STEPS and
# train.max_minutes=MINUTES for `speechssl pretrain`, leaving out a value that is `recipe` (the recipe's
# own train.max_steps / train.max_minutes then hold). Anything else than a number or `recipe` stops.
train_limits() {
  limits=()
  [[ "$1" == recipe || "$1" =~ ^[0-9]+$ ]] || die "--pretrain_steps $1: a whole number of steps or 'recipe'"
  [[ "$2" == recipe || "$2" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--pretrain_minutes $2: a number of minutes or 'recipe'"
  [ "$1" = recipe ] || limits+=("train.max_steps=$1")
  [ "$2" = recipe ] || limits+=("train.max_minutes=$2")
}
