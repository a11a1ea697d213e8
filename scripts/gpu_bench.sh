#!/usr/bin/env bash
# The GPU benchmark (`make bench-gpu`) on a CUDA machine whose python3 already holds a CUDA torch:
#   1. preflight: CUDA seen, the pack and each host import in process (fails in seconds, not minutes)
#   2. the full-size speed bench on CUDA (benchmarks.run --only speed: 28 blocks, DiT-XL/2 256 px batch 4,
#      PixArt-alpha 512 px, 5 repeats), in process on ComfyUI 0.3.75 (.host/ComfyUI); each finished case is
#      saved at once, so a run cut short keeps what it finished and the README is written from that
#   3. the CUDA-only checks (benchmarks.gpu_checks) on the newest host of .host/matrix (dynamic VRAM needs 0.29)
# Results go to benchmarks/results/gpu/ (--out DIR for another folder), never over the CPU results.
#
# --offline DIR: a machine with no package index (a lent GPU machine). DIR holds whl/*.whl (what the host
# needs and python3 lacks: installed into /tmp/procache-site, nothing system-wide), ComfyUI-0.3.75.tar.gz
# (the tree setup_host.sh makes, tarred from .host) and ComfyUI-<version>.tar.gz releases from ../shared/hosts.
# A module that is still missing after that and that no benchmarked path uses gets an import stand-in whose
# every use raises (the front-end files: no UI is served; comfy-kitchen's fp8/fp4 kernels: no quantized
# weights are loaded); the stand-ins used are printed and written into the results folder (STANDINS.txt).
# Each stage has its own time limit (GPU_SPEED_S, GPU_CHECKS_S, in seconds).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUTDIR="benchmarks/results/gpu"
OFFLINE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --offline) OFFLINE="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    *) echo "gpu_bench.sh: unknown argument $1 (use --offline DIR, --out DIR)" >&2; exit 2 ;;
  esac
done
say() { printf '[gpu-bench] %s\n' "$*"; }
export PYTHONUNBUFFERED=1
BASE="$ROOT/.host/ComfyUI"
MATRIX="$ROOT/.host/matrix"
STANDINS=""

standin() {   # standin MODULE WHAT: an importable package whose attributes raise, named in STANDINS.txt
  local mod="$1" what="$2" dir="$SITE/$1"
  mkdir -p "$dir"
  cat > "$dir/__init__.py" <<PYEOF
"""Import stand-in written by scripts/gpu_bench.sh --offline: $what. Any use raises."""
def __getattr__(name):
    raise ImportError("$mod is a stand-in on this machine (scripts/gpu_bench.sh --offline): $what")
PYEOF
  STANDINS="$STANDINS $mod"
}

if [ -n "$OFFLINE" ]; then
  SITE=/tmp/procache-site
  mkdir -p "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$OFFLINE"/whl/*.whl || { say "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  [ -f "$BASE/main.py" ] || { mkdir -p "$ROOT/.host" && tar -C "$ROOT/.host" -xzf "$OFFLINE/ComfyUI-0.3.75.tar.gz"; }
  mkdir -p "$MATRIX"; : > "$MATRIX/hosts.txt"
  for t in "$OFFLINE"/ComfyUI-*.tar.gz; do
    name="$(basename "$t" .tar.gz)"
    [ "$name" = "ComfyUI-0.3.75" ] && continue
    [ -f "$MATRIX/$name/main.py" ] || tar -C "$MATRIX" -xzf "$t"
    printf '%s %s %s\n' "$name" "$MATRIX/$name" "$(command -v "$PY")" >> "$MATRIX/hosts.txt"
  done
  "$PY" -c "import comfyui_frontend_package" 2>/dev/null || {
    standin comfyui_frontend_package "the front end's files (the bench serves no UI)"
    mkdir -p "$SITE/comfyui_frontend_package/static"
    printf '<!doctype html><title>ProCache GPU bench: no UI</title>\n' > "$SITE/comfyui_frontend_package/static/index.html"; }
  "$PY" -c "import comfy_kitchen" 2>/dev/null || standin comfy_kitchen "fp8/fp4 kernels (no quantized weights here)"
  "$PY" -c "import torchaudio" 2>/dev/null || { mkdir -p "$SITE/torchaudio"   # 0.8+ import it at start-up
    cp "$ROOT/scripts/torchaudio_standin.py" "$SITE/torchaudio/__init__.py"; STANDINS="$STANDINS torchaudio"; }
fi
for tree in "$BASE" $(cut -d' ' -f2 "$MATRIX/hosts.txt" 2>/dev/null); do
  [ -d "$tree/custom_nodes" ] || continue
  ln -sfn "$ROOT" "$tree/custom_nodes/ProCache"
  ln -sfn "$ROOT/tests/host_nodes" "$tree/custom_nodes/ProCacheTestNodes"
done
mkdir -p "$OUTDIR"
[ -n "$STANDINS" ] && { say "import stand-ins:$STANDINS"; echo "$STANDINS" > "$OUTDIR/STANDINS.txt"; }

rc=0
stage() {   # stage NAME SECONDS CMD...: runs CMD under a time limit, reports, never stops the script
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  say "== $name (limit ${limit} s)"
  if declare -F "$1" >/dev/null; then   # a function of this script: timeout runs programs only
    timeout -k 10 "$limit" bash -c "$(declare -f "$1"); $*"
  else
    timeout -k 10 "$limit" "$@"
  fi
  local r=$?
  say "== $name: rc=$r in $((SECONDS - t0)) s"
  [ $r -eq 0 ] || rc=1
  return $r
}

NEWEST_LINE="$(sort -V -k1,1 "$MATRIX/hosts.txt" 2>/dev/null | tail -n1)"
NEWEST="$(echo "$NEWEST_LINE" | cut -s -d' ' -f2)"       # the newest host's tree and its python
NEWEST_PY="$(echo "$NEWEST_LINE" | cut -s -d' ' -f3)"
export PY BASE NEWEST NEWEST_PY
preflight() {
  local tree
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('[gpu-bench]', torch.__version__, torch.cuda.get_device_name(0))" || return 1
  local py
  for tree in "$BASE" ${NEWEST:+"$NEWEST"}; do
    py="$PY"; [ "$tree" = "$NEWEST" ] && py="${NEWEST_PY:-$PY}"
    PROCACHE_HOST="$tree" "$py" -c "
import sys; sys.path[:0] = ['scripts', '.']
from host_inprocess import use_host
import torch; use_host(cpu=not torch.cuda.is_available())
import comfy.sd, comfy.model_management as mm, comfy_extras.nodes_easycache, nodes
from comfy_api.latest import io
print('[gpu-bench] host ok:', '$tree', mm.get_torch_device())" || return 1
  done
}
stage preflight 180 preflight || { say "preflight failed: nothing benchmarked"; exit 1; }
stage speed "${GPU_SPEED_S:-330}" env PROCACHE_HOST="$BASE" "$PY" -m benchmarks.run --only speed --device cuda --out "$OUTDIR" \
  || { [ -f "$OUTDIR/raw/speed_full_cuda.json" ] && stage speed-report 120 env PROCACHE_HOST="$BASE" "$PY" -m benchmarks.run \
         --report-only --device cuda --out "$OUTDIR"; }
stage gpu_checks "${GPU_CHECKS_S:-240}" "$PY" -m benchmarks.gpu_checks ${NEWEST:+--host "$NEWEST" --host-py "${NEWEST_PY:-$PY}"} \
  --out "$OUTDIR/gpu_checks.md"
exit $rc
