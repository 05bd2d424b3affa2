#!/usr/bin/env bash
# Provision the ONNX Runtime shared library from a pinned PyPI wheel.
#
#   scripts/fetch-ort.sh cpu   -> .cache/ort/cpu/libonnxruntime.so.1.31.1
#   scripts/fetch-ort.sh gpu   -> .cache/ort/gpu/ (CUDA 13 build + provider libraries)
#
# The wheel's sha256 is pinned below and checked before anything is extracted. A second run
# with the library already in place does nothing. Nothing here runs at `cargo build` time:
# kiln loads the library at run time (ort's `load-dynamic`), found through KILN_ORT_DIR.
set -euo pipefail

ORT_VERSION=1.31.1
variant=${1:-cpu}
case "$variant" in
  cpu)
    package=onnxruntime
    wheel="onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
    sha256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
    libs=(libonnxruntime.so.${ORT_VERSION} libonnxruntime_providers_shared.so)
    ;;
  gpu)
    package=onnxruntime-gpu
    wheel="onnxruntime_gpu-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
    sha256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
    libs=(libonnxruntime.so.${ORT_VERSION} libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so)
    ;;
  *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/ort/$variant"
stamp="$dest/.wheel-sha256"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$sha256" && -f "$dest/libonnxruntime.so.${ORT_VERSION}" ]]; then
  exit 0
fi

mkdir -p "$root/.cache/wheels" "$dest"
wheel_path="$root/.cache/wheels/$wheel"
if [[ ! -f "$wheel_path" ]] || ! echo "$sha256  $wheel_path" | sha256sum --check --status; then
  rm -f "$wheel_path"
  echo "fetch-ort: downloading $package==$ORT_VERSION from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 \
    -d "$root/.cache/wheels" "$package==$ORT_VERSION"
fi
if ! echo "$sha256  $wheel_path" | sha256sum --check --status; then
  echo "fetch-ort: sha256 of $wheel_path is $(sha256sum "$wheel_path" | cut -d' ' -f1), expected $sha256; refusing to use it" >&2
  rm -f "$wheel_path"
  exit 1
fi

tmp=$(mktemp -d "$dest/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for lib in "${libs[@]}"; do
  python3 - "$wheel_path" "onnxruntime/capi/$lib" "$tmp/$lib" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
done
for lib in "${libs[@]}"; do mv -f "$tmp/$lib" "$dest/$lib"; done
ln -sfn "libonnxruntime.so.${ORT_VERSION}" "$dest/libonnxruntime.so"
echo "$sha256" > "$stamp"
echo "fetch-ort: ONNX Runtime $ORT_VERSION ($variant) ready in $dest" >&2
