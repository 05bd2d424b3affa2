#!/usr/bin/env bash
# Extract the real model used by tests, benches and the demo from a pinned PyPI wheel:
# magika 1.0.3 (Apache-2.0), models/standard_v3_3/model.onnx, a content-type classifier
# (int32 [batch, 2048] byte tokens -> float32 [batch, 214] scores).
# The wheel's sha256 and the model's sha256 are both pinned. Idempotent.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
wheel=magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl
wheel_sha256=3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529
model_sha256=fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c
dest="$root/testdata/real"
model="$dest/magika.onnx"

if [[ -f "$model" ]] && echo "$model_sha256  $model" | sha256sum --check --status; then
  exit 0
fi
mkdir -p "$root/.cache/wheels" "$dest"
wheel_path="$root/.cache/wheels/$wheel"
if [[ ! -f "$wheel_path" ]] || ! echo "$wheel_sha256  $wheel_path" | sha256sum --check --status; then
  rm -f "$wheel_path"
  echo "fetch-model: downloading magika==1.0.3 from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    -d "$root/.cache/wheels" magika==1.0.3
fi
if ! echo "$wheel_sha256  $wheel_path" | sha256sum --check --status; then
  echo "fetch-model: sha256 of $wheel_path does not match the pinned $wheel_sha256" >&2
  rm -f "$wheel_path"
  exit 1
fi
python3 - "$wheel_path" "$dest" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for src, dst in [("magika/models/standard_v3_3/model.onnx", "magika.onnx"),
                     ("magika/models/standard_v3_3/config.min.json", "magika-config.json")]:
        with z.open(src) as f, open(f"{sys.argv[2]}/{dst}.tmp", "wb") as out:
            shutil.copyfileobj(f, out)
PY
mv -f "$dest/magika-config.json.tmp" "$dest/magika-config.json"
if ! echo "$model_sha256  $model.tmp" | sha256sum --check --status; then
  echo "fetch-model: extracted model's sha256 does not match the pinned $model_sha256" >&2
  rm -f "$model.tmp"
  exit 1
fi
mv -f "$model.tmp" "$model"
echo "$model_sha256" > "$dest/magika.onnx.sha256"
echo "fetch-model: $model ready" >&2
