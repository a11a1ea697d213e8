#!/usr/bin/env bash
# Builds .gpu/, the folder `scripts/gpu_bench.sh --offline .gpu` reads on a CUDA machine that has a CUDA
# torch in python3 but no package index (a lent GPU machine: the working tree and .gpu travel, nothing else):
#   .gpu/whl/*.whl              what ComfyUI 0.3.75 / 0.29 need and such a machine's image lacks, for CPython
#                               3.12 on x86-64 (PY_VERSION to change), no torch: the machine's own is used
#   .gpu/ComfyUI-0.3.75.tar.gz  the tree setup_host.sh made (.host/ComfyUI) less its tests and the large
#                               tokenizers no benchmarked path loads
#   .gpu/ComfyUI-<v>.tar.gz     the newer releases of ../shared/hosts (HOSTS=<folder>), as they are
# About 53 MB: with the tracked tree (~10 MB) it stays under a 64 MiB transfer limit. Front-end files and
# comfy-kitchen are left out on purpose (gpu_bench.sh puts raising stand-ins in their place and says so).
# Needs `make setup` first (for .host/ComfyUI) and a package index here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KIT="$ROOT/.gpu"
HOSTS="${HOSTS:-$ROOT/../shared/hosts}"
PY_VERSION="${PY_VERSION:-3.12}"
[ -f .host/ComfyUI/main.py ] || { echo "make_gpu_kit.sh: .host/ComfyUI is missing: run \`make setup\` first" >&2; exit 1; }
grep -qx '/.gpu/' .gitignore 2>/dev/null || grep -qx '/.gpu/' .git/info/exclude 2>/dev/null \
  || { echo "make_gpu_kit.sh: .gpu/ must be ignored by git (add /.gpu/ to .gitignore)" >&2; exit 1; }
rm -rf "$KIT"; mkdir -p "$KIT/whl"
# The host's start-up and API needs (av: comfy_api; pydantic: comfy_api's V3 types; torchsde: samplers;
# alembic/SQLAlchemy: the 0.29 asset database; comfy-aimdo: 0.29 dynamic VRAM; blake3, simpleeval: 0.29).
PKGS=(av torchsde trampoline alembic mako sqlalchemy "pydantic>=2,<3" pydantic_core pydantic_settings python-dotenv
      annotated_types typing_inspection typing_extensions comfy-aimdo==0.4.10 blake3 simpleeval)
PLAT=()
for p in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do PLAT+=(--platform "$p"); done
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp "${PLAT[@]}" -d "$KIT/whl" "${PKGS[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
# pydantic and pydantic_core must match: keep the core pydantic names
core="$(unzip -p "$KIT"/whl/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\(.*\)$/\1/p')"
if [ -n "$core" ] && ! ls "$KIT"/whl/pydantic_core-"$core"-*.whl >/dev/null 2>&1; then
  rm -f "$KIT"/whl/pydantic_core-*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
      "${PLAT[@]}" -d "$KIT/whl" "pydantic_core==$core" 2>&1 | grep -v "is ignored" || true
fi
tar -C .host -czf "$KIT/ComfyUI-0.3.75.tar.gz" \
    --exclude='ComfyUI/comfy/text_encoders/llama_tokenizer' --exclude='ComfyUI/comfy/text_encoders/qwen25_tokenizer' \
    --exclude='ComfyUI/comfy/text_encoders/t5_tokenizer' --exclude='ComfyUI/tests' --exclude='ComfyUI/tests-unit' \
    --exclude='ComfyUI/custom_nodes/*' --exclude='ComfyUI/models/*/*.safetensors' --exclude='__pycache__' \
    --exclude='ComfyUI/output' --exclude='ComfyUI/user' --exclude='ComfyUI/temp' ComfyUI
shopt -s nullglob
for t in "$HOSTS"/ComfyUI-*.tar.gz; do
  case "$(basename "$t")" in *0.29*|*0.3[0-9]*) cp "$t" "$KIT/";; esac   # the newest (dynamic VRAM) only: size
done
n="$(ls "$KIT"/whl | wc -l)"
echo "[gpu-kit] $KIT: $n wheels, $(ls "$KIT"/*.tar.gz | wc -l) host tarballs, $(du -sm "$KIT" | cut -f1) MB"
echo "[gpu-kit] on the GPU machine: PROCACHE_BENCH_COMMIT=$(git rev-parse --short=12 HEAD) bash scripts/gpu_bench.sh --offline .gpu"
