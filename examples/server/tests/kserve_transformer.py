#!/usr/bin/env python3
"""A real KServe transformer (`kserve.ModelServer` with a pass-through `kserve.Model`, as
KServe runs one in front of a predictor) with kiln-server as its predictor, over the v1 REST
protocol (the transformer's default `--predictor_protocol`), the v2 REST protocol and
grpc-v2, with `--enable_predictor_health_check`: the transformer's own readiness asks kiln's
(v1: liveness at `GET /` and `GET /v1/models/{m}`; v2: `is_server_ready`, `is_model_ready`),
and an inference sent to the transformer reaches kiln through KServe's own predictor call
(`Model.predict`) and comes back equal to Python onnxruntime's outputs.

Usage: kserve_transformer.py HTTP_HOST:PORT GRPC_HOST:PORT CORPUS_DIR MODEL
(with --serve ...: the transformer process itself, started by the checks).
Exits non-zero with a message on the first check that fails.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np


def serve():
    import kserve
    from kserve import model_server

    class Passthrough(kserve.Model):
        def __init__(self, name):
            super().__init__(name)
            self.ready = True

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    args, _ = parser.parse_known_args(sys.argv[2:])
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(
        [Passthrough(args.model_name)])


def free_ports(n):
    """`n` different free loopback ports (each held until all are chosen)."""
    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, None


def check(protocol, predictor, corpus, model):
    from corpus_golden import DTYPES, check_close, load_golden

    with open(os.path.join(corpus, "corpus.json")) as f:
        tol = {m["name"]: m for m in json.load(f)["models"]}[model]["tolerance"]
    port, grpc_port = free_ports(2)
    # The transformer's log goes to a file: a pipe nobody reads would fill and stall it.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--model_name", model, "--predictor_host", predictor,
         "--predictor_protocol", protocol, "--enable_predictor_health_check",
         "--http_port", str(port), "--grpc_port", str(grpc_port)],
        stdout=log, stderr=subprocess.STDOUT)

    def log_text():
        log.seek(0)
        return log.read().decode(errors="replace")[-4000:]
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            code, doc = get(f"{base}/v2/health/ready")
            if code == 200:
                break
            assert proc.poll() is None, log_text()
            assert time.monotonic() < deadline, \
                f"{protocol}: transformer never ready ({code} {doc}):\n{log_text()}"
            time.sleep(0.5)
        assert doc == {"ready": True}, (protocol, doc)
        code, doc = get(f"{base}/v2/models/{model}/ready")
        assert code == 200 and doc == {"name": model, "ready": True}, (protocol, code, doc)
        inputs, outputs = load_golden(corpus, model)
        if protocol == "v1":
            # One input with a batch dim, one or more outputs one row per instance.
            (only,) = inputs.values()
            body = {"instances": [row.tolist() for row in only]}
            url = f"{base}/v1/models/{model}:predict"
        else:
            body = {"inputs": [{"name": n, "shape": list(v.shape),
                                "datatype": DTYPES[str(v.dtype)], "data": v.flatten().tolist()}
                               for n, v in inputs.items()]}
            url = f"{base}/v2/models/{model}/infer"
        req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        if protocol == "v1":
            predictions = answer["predictions"]
            assert len(predictions) == len(only), (protocol, len(predictions))
            for i, p in enumerate(predictions):
                for name, want in outputs.items():
                    value = p[name] if len(outputs) > 1 else p
                    check_close(model, name, np.array(value, dtype=want.dtype), want[i], tol)
        else:
            got = {o["name"]: o for o in answer["outputs"]}
            assert set(got) == set(outputs), (protocol, set(got))
            for name, want in outputs.items():
                o = got[name]
                check_close(model, name,
                            np.array(o["data"], dtype=want.dtype).reshape(o["shape"]), want, tol)
        print(f"kserve_transformer: {protocol} ok (health through the predictor, inference)")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main():
    if sys.argv[1] == "--serve":
        serve()
        return
    http_url, grpc_url, corpus, model = sys.argv[1:5]
    check("v1", http_url, corpus, model)
    check("v2", http_url, corpus, model)
    check("grpc-v2", grpc_url, corpus, model)
    print("kserve_transformer: all checks passed")


if __name__ == "__main__":
    main()
