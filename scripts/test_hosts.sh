#!/usr/bin/env bash
# Runs the host share of the suite on every host scripts/setup_hosts.sh prepared (.host/matrix/hosts.txt) and,
# with --with-base, first on the base host (.host/ComfyUI, ComfyUI 0.3.75, in .venv: what `make test` does
# after the host-independent tests/core).
#
# The newest host (found by version; what users run) runs NEWEST_TESTS (every host and browser test), every
# other host MATRIX_TESTS (README "Tested hosts"; both can be overridden from the environment), so the whole
# host suite runs once, where users are, and each older release runs what differs between releases. Each
# host runs in its own venv (PROCACHE_HOST / PROCACHE_HOST_PY select it for the harness; unset for the base).
# Exit status: non-zero when any host failed; every host runs either way.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIST="$ROOT/.host/matrix/hosts.txt"
cd "$ROOT"

# The other matrix hosts: the families (server and in process), schedules on the noise axis, composition with
# other nodes' patches, the self-check fallback, the demo workflows and the nodes' error paths.
MATRIX_TESTS="${MATRIX_TESTS:-tests/host/test_families_server.py tests/host/test_flux_server.py
  tests/host/test_adapters_pixart_flux_sd3_wan.py tests/host/test_adapters_qwen_flux2_chroma_lumina_hunyuan_ltxv_cosmos_hidream.py tests/host/test_selective_server.py
  tests/host/test_flux_host_patches.py tests/host/test_flux_reuse_fast_path.py tests/host/test_step_reuse_inprocess.py tests/host/test_host_drift_fallback.py tests/host/test_chaining_inprocess.py
  tests/host/test_noise_axis.py tests/host/test_demo_digits.py tests/host/test_nodes_server.py
  tests/host/test_adapter_registry.py tests/host/test_family_kandinsky5.py tests/host/test_family_ltxav.py
  tests/host/test_ltxav_inprocess.py tests/host/test_family_variants.py tests/host/test_family_variants_inprocess.py
  tests/host/test_multigpu_split.py tests/host/test_dynamic_vram.py tests/host/test_few_step_server.py tests/host/test_forecast_server.py tests/host/test_token_picks_server.py tests/host/test_drift_guard_server.py}"
# The newest host (what most users run): every real-server, in-process and browser test (its pinned front end
# and 1.58.1), as on 0.3.75.
NEWEST_TESTS="${NEWEST_TESTS:-tests/host tests/web}"

WITH_BASE=0
[ "${1:-}" = "--with-base" ] && WITH_BASE=1
HOSTS_RUN="$(mktemp)"
trap 'rm -f "$HOSTS_RUN"' EXIT
[ "$WITH_BASE" -eq 1 ] && echo "base $ROOT/.host/ComfyUI $ROOT/.venv/bin/python" > "$HOSTS_RUN"
[ -s "$LIST" ] && cat "$LIST" >> "$HOSTS_RUN"
if [ ! -s "$LIST" ]; then
  echo "[procache-hosts] no other ComfyUI host set up: the matrix share is skipped (see scripts/setup_hosts.sh)"
  [ "$WITH_BASE" -eq 1 ] || exit 0
fi

version_of() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py"; }
newest="$(while read -r name tree py; do printf '%s %s\n' "$(version_of "$tree")" "$name"; done \
          < "$HOSTS_RUN" | sort -V | tail -n 1 | cut -d' ' -f2)"

failed=""
while read -r name tree py; do
  tests=""
  share="$MATRIX_TESTS"
  [ "$name" = "$newest" ] && share="$NEWEST_TESTS"
  for t in $share; do [ -e "$t" ] && tests="$tests $t"; done
  echo "[procache-hosts] ComfyUI $(version_of "$tree") ($name):$tests"
  start=$SECONDS
  if [ "$name" = "base" ]; then
    "$py" -m pytest $tests -q -p no:cacheprovider < /dev/null
  else
    PROCACHE_HOST="$tree" PROCACHE_HOST_PY="$py" "$py" -m pytest $tests -q -p no:cacheprovider < /dev/null
  fi
  rc=$?
  echo "[procache-hosts] ComfyUI $(version_of "$tree"): rc=$rc in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed="$failed $name(rc=$rc)"
done < "$HOSTS_RUN"

if [ -n "$failed" ]; then
  echo "[procache-hosts] failed on:$failed"
  exit 1
fi
echo "[procache-hosts] every host passed"
