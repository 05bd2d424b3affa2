#!/usr/bin/env bash
# `make demo`: kiln loads the real magika model only after its sha256 matches, then
# classifies a few files in one batch; then it refuses a tampered copy of the same model.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RUST_LIB_BACKTRACE=0  # the refusal below is expected: print its message, not a backtrace
bin=target/release/kiln-classify
model=testdata/real/magika.onnx
config=testdata/real/magika-config.json
sha=$(cat testdata/real/magika.onnx.sha256)

echo "== 1. classify files with the verified model (expected sha256 $sha)"
"$bin" --model "$model" --config "$config" --sha256 "$sha" \
  Cargo.toml Makefile README.md scripts/gen_testdata.py scripts/fetch-ort.sh \
  crates/runtime/src/lib.rs "$model"

echo
echo "== 2. the same model with one byte flipped: kiln refuses to load it"
mkdir -p .cache/demo
cp "$model" .cache/demo/tampered.onnx
printf '\x00' | dd of=.cache/demo/tampered.onnx bs=1 seek=100000 conv=notrunc status=none
if "$bin" --model .cache/demo/tampered.onnx --config "$config" --sha256 "$sha" Cargo.toml; then
  echo "demo: the tampered model was accepted; this is a bug" >&2
  exit 1
fi
echo "(refused, as it must be)"
