#!/usr/bin/env python3
"""The `priority` of Triton's own clients (`infer(priority=…)`: a JSON parameter over HTTP, a
`uint64_param` over gRPC; 1 is the highest level) against a running kiln-server serving
magika on one instance: with the instance busy on a long batch, 64 rows at priority 2 are
queued, then one row at priority 1; the one row must be answered first, well before the 64.
Ignoring the parameter, the two would share one batch and be answered together.

Usage: triton_priority.py HTTP_HOST:PORT GRPC_HOST:PORT
Exits non-zero with a message if either protocol does not honour it.
"""
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def rows(n):
    return (np.arange(n * 2048, dtype=np.int32).reshape(n, 2048) * 7) % 257


def scenario(name, send):
    """Runs blocker, low, high through `send(rows, priority, done)`; returns done times."""
    done, started = {}, time.monotonic()
    threads = []
    for label, n, priority, pause in (("blocker", 256, 0, 0.4), ("low", 64, 2, 0.1),
                                      ("high", 1, 1, 0.0)):
        def run(label=label, n=n, priority=priority):
            send(rows(n), priority)
            done[label] = (time.monotonic() - started) * 1000
        t = threading.Thread(target=run)
        t.start()
        threads.append(t)
        time.sleep(pause)
    for t in threads:
        t.join(120)
    print(f"triton_priority: {name}: done at " +
          ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(done.items(), key=lambda kv: kv[1])))
    assert set(done) == {"blocker", "low", "high"}, (name, done)
    assert done["high"] + 50 < done["low"], \
        f"{name}: the priority-1 request did not run before the priority-2 one ({done})"


def main():
    http_url, grpc_url = sys.argv[1], sys.argv[2]

    def http_send(x, priority):
        c = httpclient.InferenceServerClient(url=http_url, network_timeout=120.0)
        i = httpclient.InferInput("bytes", list(x.shape), "INT32")
        i.set_data_from_numpy(x, binary_data=True)
        c.infer("magika", [i], priority=priority)
        c.close()

    def grpc_send(x, priority):
        c = grpcclient.InferenceServerClient(url=grpc_url)
        i = grpcclient.InferInput("bytes", list(x.shape), "INT32")
        i.set_data_from_numpy(x)
        c.infer("magika", [i], priority=priority, client_timeout=120)
        c.close()

    scenario("HTTP", http_send)
    scenario("gRPC", grpc_send)
    print("triton_priority: all checks passed")


if __name__ == "__main__":
    main()
