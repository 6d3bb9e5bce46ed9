#!/usr/bin/env bash
# Usage: bash tools/setup.sh [VENV_DIR]
# Creates a virtual environment (default .venv) with speechssl and everything its tests,
# demo and integrations need. As root it also installs the Debian packages espeak-ng, sox
# and libsndfile1 (the demo falls back to the pure-numpy formant synthesiser without them).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
log() { echo "[setup $(date +%H:%M:%S)] $*"; }

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in espeak-ng sox libsndfile1; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    log "apt-get install$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
# pip's own output goes to a log that is shown only when an install fails.
pip_install() {
  "$py" -m pip install -q --no-cache-dir "$@" >"$venv/pip.log" 2>&1 || { grep -v '^WARNING: Location' "$venv/pip.log"; exit 1; }
}
# A CUDA build of torch takes about 5.5 GB once unpacked; say so plainly instead of pip's
# "[Errno 28] No space left on device" halfway through.
need_gib=7
if ! "$py" -c 'import torch' >/dev/null 2>&1; then
  free_kib=$(df -Pk "$venv" | awk 'NR==2 {print $4}')
  if [ -n "$free_kib" ] && [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
    echo "tools/setup.sh: only $((free_kib / 1024 / 1024)) GiB free on the disk that holds $venv;" \
         "installing torch needs about $need_gib GiB. Free some space (or pass another VENV_DIR) and retry." >&2
    exit 1
  fi
fi
# PyTorch first and pinned: these versions are known to work together (torchaudio 2.11 with torch 2.14).
if ! "$py" -c 'import torch, torchaudio' >/dev/null 2>&1; then
  log "installing torch and torchaudio"
  pip_install torch==2.14.1 torchaudio==2.11.0
fi
log "installing speechssl with extras dev, hf, io, s3prl"
pip_install -e '.[dev,hf,io,s3prl]'
"$py" -c 'import speechssl, torch, torchaudio; print("speechssl", speechssl.__version__, "torch", torch.__version__, "torchaudio", torchaudio.__version__)'
