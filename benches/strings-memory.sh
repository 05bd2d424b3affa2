#!/usr/bin/env bash
# Peak memory of kiln-server for one large BYTES (string tensor) request:
#   benches/strings-memory.sh [kiln-server binary ...]   (default: target/release/kiln-server)
#
# Why: a string element costs kiln a 24-byte Rust `String` and ONNX Runtime a 32-byte C++
# `std::string`, so string requests are where a body's size says least about its memory
# (README, "String (`BYTES`) tensors are the exception"). Two requests, each near the 32 MiB
# default body limit, one fresh server per request and binary:
# - `cat`: 5.1 M strings "cat" into a LabelEncoder (string features in, int64 ids out, what
#   skl2onnx makes of a categorical column), a model built here with the project venv's onnx;
# - `echo`: testdata/strings.onnx, 8.7 M empty strings echoed back (Identity) beside two
#   LabelEncoders;
# - `text`: 270 k sentences of 40-200 bytes (mean ~115) into the same LabelEncoder as `cat`:
#   free text, where the bytes of each string outweigh the per-element costs.
# Prints the body size, the answer's status and time (curl), the server's peak RSS (VmHWM),
# and peak ÷ body both whole and over the idle server's RSS (what the request added). Give
# several binaries (an older build first) to compare them in one run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export KILN_ORT_DIR=${KILN_ORT_DIR:-$ROOT/.cache/ort/cpu}
PY=$ROOT/.cache/venv/bin/python
[[ -x $PY ]] || { echo "the project venv is missing: run make testdata" >&2; exit 1; }
bins=("$@")
[[ ${#bins[@]} -gt 0 ]] || bins=("$ROOT/target/release/kiln-server")

# shellcheck source=benches/server-lib.sh
source "$ROOT/benches/server-lib.sh"

mkdir -p "$work/cat" "$work/echo" "$work/text"
cp "$ROOT/testdata/strings.onnx" "$work/echo/model.onnx"
"$PY" - "$work" <<'EOF'
import sys
import onnx
from onnx import TensorProto, helper
work = sys.argv[1]
g = helper.make_graph(
    [helper.make_node("LabelEncoder", ["text"], ["ids"], domain="ai.onnx.ml",
                      keys_strings=["cat", "dog"], values_int64s=[1, 2], default_int64=0)],
    "cat", [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 3])],
    [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
m.ir_version = 8
onnx.save(m, f"{work}/cat/model.onnx")
onnx.save(m, f"{work}/text/model.onnx")
n = 1_700_000
with open(f"{work}/cat.json", "w") as f:
    f.write('{"inputs":[{"name":"text","shape":[%d,3],"datatype":"BYTES","data":[' % n)
    f.write(",".join(['"cat"'] * (3 * n)))
    f.write("]}]}")
n = 2_900_000
with open(f"{work}/echo.json", "w") as f:
    f.write('{"inputs":[{"name":"text","shape":[%d,3],"datatype":"BYTES","data":[' % n)
    f.write(",".join(['""'] * (3 * n)))
    f.write(']},{"name":"n","shape":[%d,1],"datatype":"INT64","data":[' % n)
    f.write(",".join(["0"] * n))
    f.write("]}]}")
words = "the quick brown fox jumps over a lazy dog while kiln serves onnx models fast".split()
n = 90_000
with open(f"{work}/text.json", "w") as f:
    f.write('{"inputs":[{"name":"text","shape":[%d,3],"datatype":"BYTES","data":[' % n)
    f.write(",".join('"%s"' % " ".join(words[(i * 7 + j) % len(words)] for j in range(6 + i % 30))
                     for i in range(3 * n)))
    f.write("]}]}")
EOF
# One request of any size runs whole (no warm-up at that size), and fits the queue, which
# counts a string's `String` and heap block (5.1 M "cat"s hold about 290 MB).
printf 'session: {intra_op_threads: 1}\nbatch: {instances: 2, max_batch_size: 3000000, warmup: false, max_queue_bytes: 4294967296}\n' \
  >"$work/settings.yaml"
port=$(free_port)

printf '| binary | request | body MiB | status | seconds | peak RSS MiB | peak ÷ body | (peak − idle) ÷ body |\n|---|---|---|---|---|---|---|---|\n'
for bin in "${bins[@]}"; do
  # These requests hold 0.27 M to 8.7 M strings: over the default --max-string-elements
  # (1 Mi) for two of them, so it is raised where the binary has it (older ones do not).
  more=()
  help=$("$bin" --help)
  if grep -q -- --max-string-elements <<<"$help"; then more=(--max-string-elements 16777216); fi
  for case in cat echo text; do
    start_server "127.0.0.1:$port/v2/health/ready" "$work/server.log" "$bin" \
      --model-dir "$work/$case" --model-name "$case" --no-verify --listen "127.0.0.1:$port" \
      --grpc-listen off --config "$work/settings.yaml" "${more[@]}"
    idle_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    read -r code secs < <(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST \
      -H 'content-type: application/json' --data-binary @"$work/$case.json" \
      "127.0.0.1:$port/v2/models/$case/infer")
    peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    stop_server
    body=$(stat -c %s "$work/$case.json")
    python3 -c "import sys; b,p,i=int(sys.argv[1]),int(sys.argv[2])*1024,int(sys.argv[7])*1024; print(f'| {sys.argv[3]} | {sys.argv[4]} | {b/2**20:.1f} | {sys.argv[5]} | {sys.argv[6]} | {p/2**20:.0f} | {p/b:.1f}× | {(p-i)/b:.1f}× |')" \
      "$body" "$peak_kib" "$bin" "$case" "$code" "$secs" "$idle_kib"
  done
done
