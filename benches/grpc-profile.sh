#!/usr/bin/env bash
# Where kiln-server's CPU goes serving gRPC ModelInfer under h2load (what bounds
# `make bench-peers`' gRPC figures):
#   MODEL=mobilenet BATCH=32 benches/grpc-profile.sh [kiln-server binary]
#   (default binary: target/release/kiln-server)
#
# MODEL is a file of testdata/bench (mobilenet, the default; tabular_mlp; convnet). The
# server runs as bench-peers runs it (2 single-threaded instances, max_batch_size $BATCH,
# default 32); h2load sends one-row ModelInfer calls with the tensor in
# raw_input_contents (as tritonclient.grpc does), 8 connections x 8 streams. Prints h2load's
# rate, the server's CPU per call, its CPU by thread (kiln-model-N: ONNX Runtime and the
# batch's copies; tokio-rt-worker: HTTP/2, gRPC, decoding), and `perf`'s samples by
# thread and library and the hottest symbols outside ONNX Runtime. Needs h2load
# (nghttp2-client), perf (linux-perf) and the project venv (make testdata).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/kiln-server}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.cache/ort/cpu/libonnxruntime.so}
for tool in h2load perf; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done

# shellcheck source=benches/server-lib.sh
source "$ROOT/benches/server-lib.sh"

mkdir -p "$work/model"
cp "$ROOT/testdata/bench/${MODEL:-mobilenet}.onnx" "$work/model/model.onnx"
printf 'session: {intra_op_threads: 1}\nbatch: {instances: 2, max_batch_size: %s, max_queue_requests: 4096}\n' \
  "${BATCH:-32}" >"$work/settings.yaml"
grpc_message "$work/message.bin" "$work/model/model.onnx"
port=$(free_port)
grpc=$(free_port)
start_server "http://127.0.0.1:$port/v2/health/ready" "$work/server.log" \
  "$BIN" --model-dir "$work/model" --no-verify --config "$work/settings.yaml" \
  --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$grpc"

# h2load <seconds>: one run, its summary lines.
load() {
  h2load -D "$1" -c 8 -m 8 -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/message.bin" "http://127.0.0.1:$grpc/inference.GRPCInferenceService/ModelInfer" \
    | grep -E "finished in|requests:|status codes"
}
# Per thread: "tid name user+system ticks".
threads() {
  for t in /proc/"$pid"/task/*; do
    echo "$(basename "$t") $(tr ' ' _ <"$t/comm") $(awk '{print $14+$15}' "$t/stat")"
  done | sort
}
ticks() { awk '{print $14+$15}' /proc/"$pid"/stat; }

load 3 >/dev/null # warm
echo "== h2load, 10 s"
before=$(ticks)
threads >"$work/t0"
out=$(load 10)
threads >"$work/t1"
after=$(ticks)
echo "$out"
calls=$(echo "$out" | awk '/^requests:/ {print $8}')
hz=$(getconf CLK_TCK)
echo "server CPU: $(( (after - before) * 1000000 / hz / calls )) us per call ($(( after - before )) ticks at $hz/s, $calls calls)"
echo "== server CPU by thread (ticks)"
join "$work/t0" "$work/t1" | awk '{d[$2] += $5 - $3} END {for (k in d) if (d[k] > 0) print k, d[k]}' | sort -k2 -n -r

echo "== perf, 10 s of a 12 s run"
load 12 >"$work/perf-load.txt" &
loader=$!
sleep 1
perf record -F 499 -g -p "$pid" -o "$work/perf.data" -- sleep 10 >/dev/null 2>&1
wait "$loader"
cat "$work/perf-load.txt"
report() { perf report -i "$work/perf.data" --no-children -g none --stdio "$@" 2>/dev/null | grep -E "^ +[0-9]"; }
echo "== samples by thread and library"
report --sort comm,dso | head -12
echo "== hottest symbols outside ONNX Runtime"
report --sort comm,symbol | grep -v "libonnxruntime\| 0x0000" | cut -c1-150 | head -20
