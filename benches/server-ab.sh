#!/usr/bin/env bash
# REST throughput of kiln-server today against kiln-server at an older revision, same machine,
# same run: `make bench-server-ab` (BASELINE=<rev>, ROUNDS=<n>).
#
# Why: issue 16 asks for "REST requests per second on the MLP ≥ 2× today's" (today's = the
# main the issue was filed against). An absolute figure from another machine says little on
# these noisy shared VMs; the two binaries measured turn about in one run do.
#
# What: both binaries serve the tabular MLP (testdata/bench/tabular_mlp.onnx, published by
# kiln-agent with its sha256, the settings `make bench-peers` gives kiln: 2 single-threaded
# instances, max_batch_size 128), and `hey -z 10s -c 64` sends them the same one-row v2 JSON
# body as `make bench-peers` (32 FP32 values). The rounds alternate baseline and current;
# the verdict compares medians. Every answer must be a 200. Each round also runs
# `http-floor` (benches/src/bin/http-floor.rs): kiln's HTTP stack answering today's answer
# with nothing behind it, the most any server on this stack could give with `hey` on the
# same cores; and each run reports the CPU `hey` itself spent per request. The section between the
# server-ab markers of benches/RESULTS.md is rewritten with the machine and the command.
#
# LOADGEN=h2load sends the same body with `h2load --h1` (nghttp2's generator speaking HTTP/1.1,
# 64 keep-alive connections, one request at a time each, as hey) instead: it spends far less
# CPU a request than hey, so on 2 shared cores the servers, not the generator, bound the
# figure. Its section has markers of its own (server-ab-h2load).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASELINE=${BASELINE:-b7d61a8}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-10}
LOADGEN=${LOADGEN:-hey}
[[ $LOADGEN == hey || $LOADGEN == h2load ]] || { echo "LOADGEN is hey or h2load" >&2; exit 2; }
export KILN_ORT_DIR=${KILN_ORT_DIR:-$ROOT/.cache/ort/cpu}
cd "$ROOT"

rev=$(git rev-parse --short "$BASELINE^{commit}")
tree=$ROOT/target/server-ab/$rev
if [[ ! -x $ROOT/target/server-ab/bin-$rev/kiln-server ]]; then
  echo "building kiln-server at $rev (a worktree under target/server-ab; once)" >&2
  rm -rf "$tree"
  git worktree prune
  git worktree add --detach -f "$tree" "$rev" >/dev/null
  (cd "$tree" && CARGO_TARGET_DIR=$ROOT/target/server-ab/target \
    cargo build --release -q -p kiln-example-server)
  mkdir -p "$ROOT/target/server-ab/bin-$rev"
  cp "$ROOT/target/server-ab/target/release/kiln-server" "$ROOT/target/server-ab/bin-$rev/"
  git worktree remove --force "$tree"
fi
cargo build --release -q -p kiln-example-server -p kiln-agent
cargo build --release -q -p kiln-benches --bin http-floor

# shellcheck source=benches/server-lib.sh
source "$ROOT/benches/server-lib.sh"

model=$ROOT/testdata/bench/tabular_mlp.onnx
sha=$(sha256sum "$model" | cut -d' ' -f1)
printf 'root: %s\nreserve_bytes: 0\nmodels:\n  - name: tabular_mlp\n    source: file://%s\n    sha256: %s\n' \
  "$work/models" "$model" "$sha" >"$work/agent.yaml"
mkdir -p "$work/models"
RUST_LOG=warn target/release/kiln-agent fetch --config "$work/agent.yaml" >/dev/null
printf 'session: {intra_op_threads: 1}\nbatch: {instances: 2, max_batch_size: 128, max_queue_requests: 4096}\n' \
  >"$work/settings.yaml"
# The one-row request of `make bench-peers` (benches/src/inproc.rs `request(b, 1, 0)`): f32
# values written as serde_json writes them (shortest round-trip repr of the f64).
python3 - "$work/body.json" <<'EOF'
import json, struct, sys
f32 = lambda x: struct.unpack('f', struct.pack('f', x))[0]
data = [f32(f32((i * 7) % 101) / 101.0) for i in range(32)]
body = {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32", "data": data}]}
open(sys.argv[1], "w").write(json.dumps(body, separators=(",", ":")))
EOF

# run <label> <binary>: one load run against a fresh server (kiln-server, or http-floor for
# the label `floor`); appends "label req/s p99_ms ok other cpu_us_per_request
# generator_cpu_us_per_request".
run() {
  local label=$1 bin=$2 port extra=()
  port=$(free_port)
  local url=http://127.0.0.1:$port/v2/models/tabular_mlp
  if [[ $label == floor ]]; then
    start_server "$url/ready" "$work/$label.log" "$bin" "127.0.0.1:$port" "$work/answer-current.json"
  else
    # Today's server also serves gRPC (default port 8001, which may be taken).
    if "$bin" --help 2>/dev/null | grep -q -- --grpc-listen; then
      extra=(--grpc-listen "127.0.0.1:$(free_port)")
    fi
    start_server "$url/ready" "$work/$label.log" "$bin" --root "$work/models" \
      --listen "127.0.0.1:$port" --poll-ms 60000 --config "$work/settings.yaml" "${extra[@]}"
  fi
  # The answer is checked once before the load (a wrong answer fast is no figure).
  curl -sf -X POST -H 'content-type: application/json' --data-binary @"$work/body.json" "$url/infer" \
    >"$work/answer-$label.json"
  python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["outputs"][0]; assert o["shape"]==[1,8], o' \
    "$work/answer-$label.json"
  local t0 t1 gen
  if [[ $LOADGEN == hey ]]; then
    gen=(hey -z "${SECS}s" -c 64 -m POST -T application/json -D "$work/body.json" "$url/infer")
  else
    rm -f "$work/h2load.log"
    gen=(h2load --h1 -D "$SECS" -c 64 -t 1 -H 'content-type: application/json'
      -d "$work/body.json" --log-file "$work/h2load.log" "$url/infer")
  fi
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  # The generator's own user + system CPU seconds, from its rusage.
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[2:], check=True, stdout=open(sys.argv[1], "w"))
r = resource.getrusage(resource.RUSAGE_CHILDREN); print(r.ru_utime + r.ru_stime)' "$work/hey.txt" \
    "${gen[@]}" >"$work/hey-cpu.txt"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  stop_server
  python3 - "$label" "$work/hey.txt" "$((t1 - t0))" "$(cat "$work/hey-cpu.txt")" "$work/h2load.log" \
    >>"$work/rows.txt" <<'EOF'
import re, sys
t = open(sys.argv[2]).read()
if "Requests/sec:" in t:  # hey
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", t).group(1)) * 1000
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", t)}
    ok = codes.pop(200, 0)
    other = sum(codes.values()) + len(re.findall(r"^\s+\[\d+\]\s+.*error", t, re.M))
else:  # h2load: its summary, and each request's status and time (µs) from its log
    rps = float(re.search(r"([\d.]+) req/s", t).group(1))
    log = [l.split() for l in open(sys.argv[5]) if l.strip()]
    ok = sum(1 for l in log if l[1] == "200")
    # Any other status, or -1 for a request that failed on the wire. Requests the
    # duration's end left in flight (at most one a connection) are in neither: h2load
    # abandons them.
    other = len(log) - ok
    times = sorted(int(l[2]) for l in log)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000 if times else 0.0
# The server's user + system CPU over the run (clock ticks of 10 ms) per answered request.
cpu_us = int(sys.argv[3]) * 10_000 / max(ok, 1)
hey_us = float(sys.argv[4]) * 1e6 / max(ok, 1)
print(sys.argv[1], f"{rps:.0f}", f"{p99:.1f}", ok, other, f"{cpu_us:.0f}", f"{hey_us:.0f}")
EOF
  tail -1 "$work/rows.txt" >&2
}

for r in $(seq "$ROUNDS"); do
  run "$rev" "target/server-ab/bin-$rev/kiln-server"
  run current target/release/kiln-server
  run floor target/release/http-floor
done

head=$(git rev-parse --short HEAD)
# A binary built from uncommitted sources is not HEAD's: say so in its label.
if [[ -n $(git status --porcelain -- crates examples Cargo.toml Cargo.lock) ]]; then
  head="$head+uncommitted"
fi
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
python3 - "$work/rows.txt" "$rev" "$head" "$(nproc)" "$cpu" "$BASELINE" "$ROUNDS" "$SECS" "$LOADGEN" \
  >"$work/section.md" <<'EOF'
import statistics, sys
rows_file, rev, head, cores, cpu, baseline, rounds, secs, loadgen = sys.argv[1:]
h2 = loadgen == "h2load"
gen = "`h2load --h1`" if h2 else "`hey`"
run_cmd = (f"`h2load --h1 -D {secs} -c 64 -t 1`" if h2 else f"`hey -z {secs}s -c 64`")
env = " LOADGEN=h2load" if h2 else ""
rows = [l.split() for l in open(rows_file)]
bad = [r for r in rows if int(r[4]) != 0]
by = {}
for label, rps, p, ok, other, c, h in rows:
    by.setdefault(label, []).append((float(rps), float(p), float(c), float(h)))
med, p99, cpu_us, hey_us = ({k: statistics.median(r[i] for r in v) for k, v in by.items()}
                            for i in range(4))
names = {rev: f"`{rev}`", "current": f"`{head}`", "floor": "HTTP floor"}
print(f"## kiln-server REST today against an older revision (tabular MLP, {gen})\n")
print(f"Machine: {cpu}, {cores} cores. Command: `make bench-server-ab BASELINE={baseline} ROUNDS={rounds}{env}` "
      f"(`benches/server-ab.sh`): kiln-server at `{rev}` and at `{head}` (this run's HEAD) serve the tabular MLP "
      "with `make bench-peers`' settings (2 single-threaded instances, max_batch_size 128); "
      f"{run_cmd} sends each the same one-row v2 JSON body (HTTP/1.1, 64 keep-alive connections); the rounds alternate the "
      "binaries, a fresh server per round; every answer was a 200. **HTTP floor**: `http-floor` "
      "(`benches/src/bin/http-floor.rs`), kiln's accept loop and HTTP stack answering today's answer "
      f"bytes with no decoding, model or hand-off behind them: the most a server on this stack gets with "
      f"{gen} on the same cores. Server CPU = the server process's user + system time over the run ÷ "
      f"answers (`/proc/<pid>/stat`); generator CPU = {gen}'s own (its rusage) ÷ answers." if not bad else "SOME ANSWERS FAILED")
print()
print(f"| round | binary | req/s | p99 ms | server CPU µs / request | {gen} CPU µs / request | answers 200 / other |")
print("|---|---|---|---|---|---|---|")
count = {}
for label, rps, p, ok, other, c, h in rows:
    count[label] = count.get(label, 0) + 1
    print(f"| {count[label]} | {names[label]} | {rps} | {p} | {c} | {h} | {ok} / {other} |")
print()
print("Medians: " + "; ".join(
    f"{names[k]} {med[k]:.0f} req/s, p99 {p99[k]:.1f} ms, {cpu_us[k]:.0f} µs of server CPU and "
    f"{hey_us[k]:.0f} µs of {gen} CPU per request" for k in (rev, "current", "floor")) + ". "
      f"**Today {med['current'] / med[rev]:.2f}× the requests per second of `{rev}`**, "
      f"server CPU {cpu_us['current']:.0f} vs {cpu_us[rev]:.0f} µs per request. The HTTP floor is "
      f"{med['floor'] / med[rev]:.2f}× `{rev}`'s rate: twice `{rev}`'s rate would be "
      f"{2 * med[rev] / med['floor']:.2f}× what kiln's HTTP stack alone answers here; today's server "
      f"reaches {med['current'] / med['floor']:.0%} of the floor.")
if bad:
    sys.exit(1)
EOF
cat "$work/section.md"
marker=server-ab
[[ $LOADGEN == hey ]] || marker=server-ab-$LOADGEN
python3 - "$ROOT/benches/RESULTS.md" "$work/section.md" "$marker" <<'EOF'
import sys
path, section, marker = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
text = open(path).read()
start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
block = f"{start}\n{section}{end}"
if start in text:
    a, b = text.index(start), text.index(end) + len(end)
    text = text[:a] + block + text[b:]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(text)
EOF
