#!/usr/bin/env bash
# Runs the host-matrix share of the suite on every host scripts/setup_hosts.sh prepared (.host/matrix/hosts.txt),
# after `pytest tests` has run the whole suite on ComfyUI 0.3.75.
#
# Every matrix host runs MATRIX_TESTS, the newest host also NEWEST_TESTS (README "Tested hosts"; both can be
# overridden from the environment). Each host runs in its own venv (PROCACHE_HOST / PROCACHE_HOST_PY select it
# for the harness).
# Exit status: non-zero when any host failed; every host runs either way.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIST="$ROOT/.host/matrix/hosts.txt"
cd "$ROOT"

# Every matrix host: the families (server and in process), schedules on the noise axis, composition with
# other nodes' patches, the self-check fallback, the demo workflows and the nodes' error paths.
MATRIX_TESTS="${MATRIX_TESTS:-tests/host/test_families_server.py tests/host/test_flux_server.py
  tests/host/test_adapter_families.py tests/host/test_adapter_families_more.py tests/host/test_selective_server.py
  tests/host/test_flux_host_patches.py tests/host/test_host_drift_fallback.py tests/host/test_chaining_inprocess.py
  tests/host/test_noise_axis.py tests/host/test_demo_digits.py tests/host/test_nodes_server.py}"
# The newest host also: the browser and route tests (its pinned front end and 1.58.1), faults and fuzzing,
# TorchCompileModel / quantized layers, memory placement and low-VRAM loading.
NEWEST_TESTS="${NEWEST_TESTS:-tests/web tests/host/test_faults.py tests/host/test_prompt_fuzz.py
  tests/host/test_combined_with.py tests/host/test_memory_inprocess.py tests/host/test_memory_server.py
  tests/host/test_lowvram_server.py}"

if [ ! -s "$LIST" ]; then
  echo "[procache-hosts] no other ComfyUI host set up: the matrix share is skipped (see scripts/setup_hosts.sh)"
  exit 0
fi

version_of() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py"; }
newest="$(while read -r name tree py; do printf '%s %s\n' "$(version_of "$tree")" "$name"; done < "$LIST" \
          | sort -V | tail -n 1 | cut -d' ' -f2)"

failed=""
while read -r name tree py; do
  tests=""
  for t in $MATRIX_TESTS; do [ -e "$t" ] && tests="$tests $t"; done
  if [ "$name" = "$newest" ]; then for t in $NEWEST_TESTS; do [ -e "$t" ] && tests="$tests $t"; done; fi
  echo "[procache-hosts] ComfyUI $(version_of "$tree") ($name):$tests"
  start=$SECONDS
  PROCACHE_HOST="$tree" PROCACHE_HOST_PY="$py" "$py" -m pytest $tests -q -p no:cacheprovider < /dev/null
  rc=$?
  echo "[procache-hosts] ComfyUI $(version_of "$tree"): rc=$rc in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed="$failed $name(rc=$rc)"
done < "$LIST"

if [ -n "$failed" ]; then
  echo "[procache-hosts] failed on:$failed"
  exit 1
fi
echo "[procache-hosts] every matrix host passed"
