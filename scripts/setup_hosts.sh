#!/usr/bin/env bash
# Sets up the other ComfyUI releases of the host matrix beside the 0.3.75 of scripts/setup_host.sh.
#
#   bash scripts/setup_hosts.sh [FOLDER]     FOLDER (default: $HOSTS, else ../shared/hosts) holds ComfyUI
#                                            release tarballs (ComfyUI-<version>.tar.gz) or unpacked trees
#
# Each host gets, under .host/matrix/ (ignored):
#   <name>/            the tree (unpacked once; a tree given as a folder is copied, never touched)
#   <name>-venv/       its own venv: that release's requirements.txt (torch lines dropped). torch itself and
#                      everything the release does not pin differently come from .venv through a .pth line,
#                      so torch 2.14.1 is installed once.
#   <name>/custom_nodes/ProCache -> this repository, plus the test-only nodes
# and one line "<name> <tree> <python>" in .host/matrix/hosts.txt, which scripts/test_hosts.sh reads.
# Idempotent: a second run takes seconds. Without a folder of hosts it says so in one line and exits 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${1:-${HOSTS:-$ROOT/../shared/hosts}}"
MATRIX="$ROOT/.host/matrix"
BASE_PY="$ROOT/.venv/bin/python"
say() { printf '[procache-hosts] %s\n' "$*"; }

mkdir -p "$MATRIX"
: > "$MATRIX/hosts.txt"
if [ ! -d "$SRC" ]; then
  say "no host folder at $SRC: only ComfyUI 0.3.75 is tested (make test HOSTS=<folder of ComfyUI trees> adds others)"
  exit 0
fi
[ -x "$BASE_PY" ] || { say "$BASE_PY missing: run scripts/setup_host.sh first"; exit 1; }
BASE_SITE="$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

setup_one() { # setup_one NAME SOURCE(tarball or folder)
  local name="$1" src="$2" tree="$MATRIX/$1" venv="$MATRIX/$1-venv" stamp="$MATRIX/$1.stamp"
  local src_id
  src_id="$(stat -c '%s %Y' "$src")"
  if [ ! -f "$tree/main.py" ] || [ "$(cat "$tree/.procache-src" 2>/dev/null)" != "$src_id" ]; then
    say "unpacking $name from $src"
    rm -rf "$tree" "$stamp"
    local tmp
    tmp="$(mktemp -d "$MATRIX/.unpack.XXXXXX")"
    if [ -d "$src" ]; then
      cp -a "$src" "$tmp/tree"
    else
      tar -xzf "$src" -C "$tmp"
      mv "$tmp"/*/ "$tmp/tree"
    fi
    [ -f "$tmp/tree/main.py" ] || { say "$src holds no ComfyUI tree (no main.py)"; rm -rf "$tmp"; return 1; }
    mv "$tmp/tree" "$tree"
    rm -rf "$tmp"
    printf '%s' "$src_id" > "$tree/.procache-src"
  fi
  local req_hash
  req_hash="$(cat "$tree/requirements.txt" "$ROOT/scripts/setup_hosts.sh" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$req_hash" ] || [ ! -x "$venv/bin/python" ]; then
    say "installing $name's requirements into $venv"
    [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # the base venv goes last on sys.path: this host's own pins (front end, templates, ...) win
    printf 'import sys; sys.path.append(%s)\n' "'$BASE_SITE'" > "$site/zz_procache_base.pth"
    grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$tree/requirements.txt" > "$MATRIX/$name-requirements.txt"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$MATRIX/$name-requirements.txt" 2>&1 \
      | grep -v -E "is ignored: it is neither|outside environment|Not uninstalling|Can't uninstall" || true
    # Releases from 0.8 on import torchaudio while they start (LTX audio VAE through comfy/sd.py), and the
    # registry has no torchaudio for torch 2.14. The test venv alone gets a stand-in whose every use raises.
    if ! "$venv/bin/python" -c "import torchaudio" >/dev/null 2>&1; then
      mkdir -p "$site/torchaudio"
      cp "$ROOT/scripts/torchaudio_standin.py" "$site/torchaudio/__init__.py"
      printf 'from . import _missing_submodule as _m\n_m(__name__)\n' > "$site/torchaudio/functional.py"
      printf 'from . import _missing_submodule as _m\n_m(__name__)\n' > "$site/torchaudio/transforms.py"
    fi
    # the host's own start-up check: imports every node and custom node, then exits
    (cd "$tree" && "$venv/bin/python" main.py --cpu --quick-test-for-ci --disable-auto-launch \
        --database-url sqlite:///:memory: > "$MATRIX/$name-start.log" 2>&1) \
      || { say "$name does not start in its venv:"; tail -n 30 "$MATRIX/$name-start.log"; return 1; }
    printf '%s' "$req_hash" > "$stamp"
  fi
  local link
  for link in "ProCache:$ROOT" "ProCacheTestNodes:$ROOT/tests/host_nodes"; do
    local dst="$tree/custom_nodes/${link%%:*}" target="${link#*:}"
    if [ "$(readlink "$dst" 2>/dev/null || true)" != "$target" ]; then rm -rf "$dst"; ln -s "$target" "$dst"; fi
  done
  printf '%s %s %s\n' "$name" "$tree" "$venv/bin/python" >> "$MATRIX/hosts.txt"
  say "ready: $name ($(sed -n 's/^__version__ = "\(.*\)"/ComfyUI \1/p' "$tree/comfyui_version.py"))"
}

shopt -s nullglob
found=0
if [ -f "$SRC/main.py" ]; then candidates=("$SRC"); else candidates=("$SRC"/ComfyUI-*.tar.gz "$SRC"/*/); fi
for src in "${candidates[@]}"; do
  src="${src%/}"
  if [ -d "$src" ] && [ ! -f "$src/main.py" ]; then continue; fi
  name="$(basename "$src")"; name="${name%.tar.gz}"
  setup_one "$name" "$src"
  found=$((found + 1))
done
[ "$found" -gt 0 ] || say "no ComfyUI tarball or tree in $SRC: only ComfyUI 0.3.75 is tested"
