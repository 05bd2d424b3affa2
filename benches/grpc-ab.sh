#!/usr/bin/env bash
# kiln-server binaries against each other on gRPC, turn about:
#   ROUNDS=3 MODEL=tabular_mlp BATCH=128 benches/grpc-ab.sh OLD_BINARY NEW_BINARY ...
#
# Why: `make bench-peers` runs each contender once, and on these shared 2-core VMs one
# 10-second h2load run can land 20-30% off another of the same binary. Alternating the
# binaries round after round, on the same model, settings and load, tells a regression from
# the machine's noise. The server runs as bench-peers runs it (2 single-threaded instances,
# max_batch_size $BATCH); h2load sends ModelInfer calls of $ROWS rows (default 1) with the tensor in
# raw_input_contents (as tritonclient.grpc does), 8 connections x 8 streams, 10 s a run.
# MODEL is a file of testdata/bench (tabular_mlp, mobilenet, convnet). Each run also reports
# the server's CPU (user + system) and minor page faults per call, from /proc/<pid>/stat over
# the run. A BINARY argument may start with environment settings for it, in one word:
# 'MIMALLOC_PURGE_DELAY=0 target/release/kiln-server' (no spaces in paths). STREAM=<n> sends
# ModelStreamInfer calls instead, each a stream of n such requests (what `tritonclient.grpc`'s
# start_stream and perf_analyzer --streaming send), and reports requests (messages) a second.
# Needs h2load (nghttp2-client) and the project venv (make testdata).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.cache/ort/cpu/libonnxruntime.so}
rounds=${ROUNDS:-3}
model=${MODEL:-tabular_mlp}
[[ $# -gt 0 ]] || { echo "usage: benches/grpc-ab.sh BINARY..." >&2; exit 2; }
command -v h2load >/dev/null || { echo "h2load is missing (nghttp2-client)" >&2; exit 1; }

# shellcheck source=benches/server-lib.sh
source "$ROOT/benches/server-lib.sh"

mkdir -p "$work/model"
cp "$ROOT/testdata/bench/$model.onnx" "$work/model/model.onnx"
printf 'session: {intra_op_threads: 1}\nbatch: {instances: 2, max_batch_size: %s, max_queue_requests: 4096}\n' \
  "${BATCH:-128}" >"$work/settings.yaml"
grpc_message "$work/message.bin" "$work/model/model.onnx" "${ROWS:-1}"
method=ModelInfer per_call=1
if [[ -n ${STREAM:-} ]]; then
  [[ $STREAM =~ ^[1-9][0-9]*$ ]] || { echo "STREAM is a number of requests a stream (1 or more)" >&2; exit 2; }
  method=ModelStreamInfer per_call=$STREAM
  for _ in $(seq "$STREAM"); do cat "$work/message.bin"; done >"$work/stream.bin"
  mv "$work/stream.bin" "$work/message.bin"
fi
hz=$(getconf CLK_TCK)
# check <port>: the call h2load sends, sent once by grpcio (what tritonclient.grpc runs on):
# every request must be answered without an error (h2load sees HTTP statuses only, and a
# failed gRPC call, or a failed request on a stream, is an HTTP 200).
check() {
  "$ROOT/.cache/venv/bin/python" - "127.0.0.1:$1" "$work/message.bin" "$method" "$per_call" <<'PY'
import struct, sys
import grpc
from tritonclient.grpc import service_pb2
addr, path, method, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data, frames = open(path, "rb").read(), []
while data:
    size = struct.unpack(">I", data[1:5])[0]
    frames.append(data[5:5 + size])
    data = data[5 + size:]
channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
full = "/inference.GRPCInferenceService/" + method
if method == "ModelInfer":
    call = channel.unary_unary(full, request_serializer=bytes, response_deserializer=service_pb2.ModelInferResponse.FromString)
    answers = [call(frames[0], timeout=60)]
    errors = []
else:
    call = channel.stream_stream(full, request_serializer=bytes, response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
    answers = list(call(iter(frames), timeout=60))
    errors = [a.error_message for a in answers if a.error_message]
assert len(answers) == n and not errors, f"{len(answers)} answers of {n}: {errors[:1]}"
PY
}
# Server CPU ticks and minor faults so far: "ticks faults".
usage() { awk '{print $14+$15, $10}' /proc/"$pid"/stat; }
echo "| round | binary | requests/s | calls answered 2xx | server CPU µs / request | page faults / request |"
echo "|---|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  for bin in "$@"; do
    port=$(free_port); grpc=$(free_port)
    start_server "http://127.0.0.1:$port/v2/health/ready" "$work/server.log" \
      env $bin --model-dir "$work/model" --no-verify --config "$work/settings.yaml" \
      --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$grpc"
    check "$grpc"
    read -r t0 f0 < <(usage)
    out=$(h2load -D 10 -c 8 -m 8 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' \
      -d "$work/message.bin" "http://127.0.0.1:$grpc/inference.GRPCInferenceService/$method")
    rate=$(grep -oE '[0-9.]+ req/s' <<<"$out" | head -1 | cut -d' ' -f1)
    rate=$(awk -v r="$rate" -v n="$per_call" 'BEGIN {printf "%.0f", r * n}')
    ok=$(grep -oE '[0-9]+ 2xx' <<<"$out" | cut -d' ' -f1)
    [[ ${ok:-0} -gt 0 ]] || { echo "no call answered 2xx: $out" >&2; cat "$work/server.log" >&2; exit 1; }
    read -r t1 f1 < <(usage)
    cpu=$(( (t1 - t0) * 1000000 / hz / (ok * per_call) ))
    faults=$(awk -v f=$(( f1 - f0 )) -v n="$(( ok * per_call ))" 'BEGIN {printf "%.2f", f / n}')
    echo "| $r | $bin | $rate | $ok | $cpu | $faults |"
    stop_server
  done
done
