#!/usr/bin/env bash
# Installs the official ComfyUI workflow templates the accelerate tests run on, at a pinned version,
# into .host/templates-json-<version>/ (pip --target, no deps: it is JSON only). Never into a host's
# venv (0.29.0 ships its own, older copy for its template browser) and never into the repository.
# Idempotent: skipped when the folder holds the pinned version.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${PROCACHE_TEMPLATES_VERSION:-0.1.123}"
DEST="$ROOT/.host/templates-json-$VERSION"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ -f "$DEST/comfyui_workflow_templates_json/templates/index.json" ] \
   && [ -d "$DEST/comfyui_workflow_templates_json-$VERSION.dist-info" ]; then
  exit 0
fi
printf '[procache-templates] installing comfyui-workflow-templates-json==%s into %s\n' "$VERSION" "$DEST"
rm -rf "$DEST"
"$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$DEST" \
  "comfyui-workflow-templates-json==$VERSION" 2>&1 | grep -v "is ignored: it is neither" || true
test -f "$DEST/comfyui_workflow_templates_json/templates/index.json"
