# Sourced by the benches that start kiln-server themselves (server-ab.sh, strings-memory.sh,
# grpc-ab.sh, grpc-profile.sh):
# a scratch directory and the server started in the background, both gone on exit
# (`$work`, `$pid`), a free port, and a server waited for and stopped.

work=$(mktemp -d)
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server <ready url> <log> <command...>: runs the command in the background as `$pid`
# and waits up to 30 s for the url to answer 200 (the log is shown if it never does).
start_server() {
  local url=$1 log=$2
  shift 2
  RUST_LOG=warn "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    curl -sf "$url" >/dev/null && return 0
    sleep 0.1
  done
  cat "$log" >&2
  exit 1
}

# Stops the server `start_server` started.
stop_server() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
}

# grpc_message <out> <model.onnx> [rows]: one gRPC-framed ModelInferRequest (model "model") of
# `rows` rows (default 1) of random FP32 for the model's first input, in raw_input_contents (as
# tritonclient.grpc sends it). Needs the project venv's python (tritonclient, onnx).
grpc_message() {
  "$ROOT/.cache/venv/bin/python" - "$1" "$2" "${3:-1}" <<'PY'
import struct, sys
import numpy as np, onnx
from tritonclient.grpc import service_pb2
m = onnx.load(sys.argv[2]); i = m.graph.input[0]; rows = int(sys.argv[3])
dims = [d.dim_value for d in i.type.tensor_type.shape.dim][1:]
req = service_pb2.ModelInferRequest(model_name="model")
req.inputs.add(name=i.name, datatype="FP32", shape=[rows] + dims)
req.raw_input_contents.append(np.random.default_rng(0).random([rows] + dims, dtype=np.float32).tobytes())
body = req.SerializeToString()
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(body)) + body)
PY
}
