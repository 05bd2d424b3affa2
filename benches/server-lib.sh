# Sourced by the benches that start kiln-server themselves (server-ab.sh, strings-memory.sh):
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
