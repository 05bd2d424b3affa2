#!/usr/bin/env bash
# `make demo`: a kiln pod simulated on this machine, as the kubelet would run it.
#   1. a local S3 server (moto_server) holds the real model (magika);
#   2. kiln-agent (the native sidecar) fetches, verifies and publishes it into a temp dir (the
#      emptyDir); its /startupz gates the server's start;
#   3. kiln-server serves the directory over the Open Inference Protocol v2; its readiness flips
#      once the model is loaded and warmed;
#   4. concurrent load; then a new version is uploaded and hot-swapped under load, then a
#      corrupt one is uploaded and never served — with no failed request throughout.
# Everything stops at the end or on Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=target/release
export KILN_ORT_DIR=${KILN_ORT_DIR:-$root/.cache/ort/cpu}
export RUST_LIB_BACKTRACE=0
model=testdata/real/magika.onnx
work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
wait_for() { # url timeout_s [pid log]: until the URL answers 200; fails fast if pid dies
  local deadline=$(( $(date +%s) + $2 ))
  until curl -sf -o /dev/null "$1"; do
    if [[ -n "${3:-}" ]] && ! kill -0 "$3" 2>/dev/null; then
      echo "demo: the process behind $1 exited:" >&2; tail -20 "$4" >&2; exit 1
    fi
    if (( $(date +%s) > deadline )); then echo "demo: $1 never answered 200" >&2; exit 1; fi
    sleep 0.05
  done
}

s3=$(free_port); agent_port=$(free_port); port=$(free_port)
echo "== object store: moto_server on 127.0.0.1:$s3, bucket 'models' with magika v1"
moto_server -H 127.0.0.1 -p "$s3" >"$work/moto.log" 2>&1 & pids+=($!)
wait_for "http://127.0.0.1:$s3/" 30
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION=us-east-1
s3py() { # boto3 comes with moto
  python3 -c "import boto3, sys; c = boto3.client('s3', endpoint_url='http://127.0.0.1:$s3'); $1" "${@:2}"
}
upload() { s3py "c.upload_file(sys.argv[1], 'models', 'magika/model.onnx')" "$1"; }
s3py "c.create_bucket(Bucket='models')"
upload "$model"

mkdir -p "$work/models"
cat >"$work/agent.yaml" <<YAML
root: $work/models
listen: 127.0.0.1:$agent_port
interval_s: 1
keep_versions: 2
reserve_bytes: 0
models:
  - name: magika
    source: s3://models/magika/model.onnx
    verify: false   # the demo uploads new versions; production pins sha256 (README)
    store: {aws_endpoint: "http://127.0.0.1:$s3", aws_allow_http: "true", aws_region: us-east-1,
            aws_access_key_id: demo, aws_secret_access_key: demo}
YAML

echo "== pod start: kiln-agent (native sidecar) first"
t0=$(now)
RUST_LOG=warn "$bin/kiln-agent" run --config "$work/agent.yaml" >"$work/agent.log" 2>&1 & pids+=($!)
wait_for "http://127.0.0.1:$agent_port/startupz" 120 "$!" "$work/agent.log"
t1=$(now)
echo "   /startupz 200 after $(printf '%.2f' "$(python3 -c "print($t1 - $t0)")") s: fetched, sha256 computed, published atomically"
echo "== main container: kiln-server (starts only now, as the kubelet would)"
RUST_LOG=warn "$bin/kiln-server" --root "$work/models" --listen "127.0.0.1:$port" --grpc-listen off --poll-ms 200 \
  --drain-delay-s 1 >"$work/server.log" 2>&1 & pids+=($!); server=$!
wait_for "http://127.0.0.1:$port/v2/health/live" 60 "$server" "$work/server.log"
curl -s -o /dev/null -w "   live; /v2/health/ready: %{http_code} (loading and warming)\n" "http://127.0.0.1:$port/v2/health/ready" || true
wait_for "http://127.0.0.1:$port/v2/health/ready" 120 "$server" "$work/server.log"
t2=$(now)
echo "   /v2/health/ready 200 after $(printf '%.2f' "$(python3 -c "print($t2 - $t1)")") s more (load, verify, warm-up)"
echo "   time to ready: $(printf '%.2f' "$(python3 -c "print($t2 - $t0)")") s in all"

python3 - "$work/request.json" <<'PY'
import json, sys
row = [(i * 31) % 257 for i in range(2048)]
json.dump({"id": "demo", "inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": row}]}, open(sys.argv[1], "w"))
PY
url="http://127.0.0.1:$port/v2/models/magika/infer"
echo
echo "== one request"
curl -sf "$url" -d @"$work/request.json" | python3 -c 'import json,sys; r=json.load(sys.stdin); o=r["outputs"][0]; print("   model_version", r["model_version"], "| output", o["name"], o["datatype"], o["shape"], "| top score %.4f" % max(o["data"]))'

echo
echo "== 5 s of load, 16 concurrent clients"
"$bin/kiln-load" --url "$url" --body-file "$work/request.json" --concurrency 16 --seconds 5 | sed 's/^/   /'

echo
echo "== hot swap under load: a new version is uploaded while 16 clients keep sending"
"$bin/kiln-load" --url "$url" --body-file "$work/request.json" --concurrency 16 --seconds 8 >"$work/swap.txt" & load=$!
sleep 2
# The same graph with an unknown protobuf field appended (ignored by ONNX Runtime): new bytes,
# new ETag, same answers.
cp "$model" "$work/v2.onnx"; printf '\xa0\x06\x01' >>"$work/v2.onnx"
upload "$work/v2.onnx"
wait "$load" || { cat "$work/swap.txt"; echo "demo: requests failed during the swap" >&2; exit 1; }
sed 's/^/   /' "$work/swap.txt"

echo
echo "== a corrupt upload: the agent publishes the bytes it got, the server refuses to load them,"
echo "   the previous version keeps serving"
before=$(curl -sf "http://127.0.0.1:$port/v2/models/magika" | python3 -c 'import json,sys; print(json.load(sys.stdin)["versions"][0])')
upload testdata/garbage.onnx
"$bin/kiln-load" --url "$url" --body-file "$work/request.json" --concurrency 8 --seconds 4 | sed 's/^/   /'
after=$(curl -sf "http://127.0.0.1:$port/v2/models/magika" | python3 -c 'import json,sys; print(json.load(sys.stdin)["versions"][0])')
echo "   serving before: $before, after: $after"
[[ "$before" == "$after" ]] || { echo "demo: the corrupt version was served" >&2; exit 1; }

echo
echo "== key metrics"
curl -sf "http://127.0.0.1:$port/metrics" | grep -E '^kiln_(batch_size_rows_(bucket|count|sum)|http_requests_total|model_load_duration_seconds_count)' \
  | grep -vE 'le="(0|2|4|16|32|128|256|512|1024|\+Inf)"' | sed 's/^/   /' | head -30
curl -sf "http://127.0.0.1:$agent_port/metrics" | grep -E '^kiln_agent_(downloaded_bytes_total|model_ready|cache_hits_total|unchanged_polls_total)' | sed 's/^/   /'
echo
echo "demo: done (stopping the pod)"
