#!/usr/bin/env bash
# Installs what the headless-browser tests (tests/web) need. Idempotent: a second run takes seconds.
#  - Debian's chromium at /usr/bin/chromium (apt-get; skipped when it is already there)
#  - the Python `playwright` package into .venv (pip). We NEVER run `playwright install`:
#    the tests launch the system chromium through executable_path="/usr/bin/chromium".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ ! -x "$PY" ]; then
    echo "setup_browser.sh: $PY missing; run scripts/setup_host.sh first" >&2
    exit 1
fi
if ! "$PY" -c "import playwright.sync_api" 2>/dev/null; then
    "$PY" -m pip install -q "playwright>=1.40"
fi
if ! "$PY" -c "import pytest, requests" 2>/dev/null; then
    "$PY" -m pip install -q pytest requests
fi
/usr/bin/chromium --version 2>/dev/null || true
"$PY" -c "import playwright; from importlib.metadata import version; print('playwright', version('playwright'))"
