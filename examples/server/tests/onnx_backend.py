#!/usr/bin/env python3
"""The ONNX project's own backend-test models, shipped in the pinned `onnx` wheel
(`onnx/backend/test/data`: models converted from PyTorch modules and operators, the simple
models, and the "light" model-zoo classifiers: AlexNet, DenseNet-121, Inception v1/v2,
ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512), served by a running kiln-server, through
tritonclient's HTTP (binary data) and gRPC clients, each answer compared with Python
onnxruntime's on the same inputs (the test's own `test_data_set_0` where it has one, else
seeded random inputs). A model onnxruntime cannot load (opset 6 kernels it dropped, a locale
it lacks) must be listed by kiln as not ready with the reason; every other must be ready and
answer exactly what onnxruntime answers. Nobody at kiln wrote or chose these models.

Usage: onnx_backend.py HTTP_HOST:PORT GRPC_HOST:PORT NAME=PATH...
"""
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import numpy_helper

from corpus_golden import request

DTYPES = {np.float32, np.float64, np.int64, np.int32, np.bool_, np.uint8, np.int8, np.object_}


def feeds_for(path, session):
    """The test's own inputs (`test_data_set_0/input_N.pb` beside the model), else seeded
    random ones (the light models: dynamic dims as 1)."""
    data = os.path.join(os.path.dirname(path), "test_data_set_0")
    if os.path.basename(path) == "model.onnx" and os.path.isdir(data):
        feeds = {}
        for i, inp in enumerate(session.get_inputs()):
            t = onnx.TensorProto()
            with open(os.path.join(data, f"input_{i}.pb"), "rb") as f:
                t.ParseFromString(f.read())
            feeds[inp.name] = numpy_helper.to_array(t)
        return feeds
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in session.get_inputs()}


def states(http):
    return {m["name"]: m for m in http.get_model_repository_index()}


def main():
    http_url, grpc_url = sys.argv[1:3]
    models = dict(a.split("=", 1) for a in sys.argv[3:])
    http = httpclient.InferenceServerClient(url=http_url)
    g = grpcclient.InferenceServerClient(url=grpc_url)
    # Every model settles (ready, or unavailable with a reason) within five minutes.
    deadline = time.monotonic() + 300
    while True:
        index = states(http)
        settled = {n for n, m in index.items() if m.get("state") in ("READY", "UNAVAILABLE")}
        if set(models) <= settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(models) <= settled, f"never settled: {sorted(set(models) - settled)}"
    served = refused = 0
    failures = []
    for name, path in sorted(models.items()):
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime itself cannot load it
            m = index[name]
            if m["state"] != "UNAVAILABLE" or not m.get("reason"):
                failures.append(f"{name}: onnxruntime refuses it ({str(e)[:80]}) but kiln lists {m}")
            else:
                refused += 1
                print(f"onnx_backend: {name} refused as onnxruntime refuses it: {m['reason'][:100]}")
            continue
        if index[name]["state"] != "READY":
            failures.append(f"{name}: onnxruntime runs it, kiln lists {index[name]}")
            continue
        feeds = feeds_for(path, session)
        if any(np.asarray(v).dtype.type not in DTYPES for v in feeds.values()):
            failures.append(f"{name}: an input type this suite cannot send: {[v.dtype for v in feeds.values()]}")
            continue
        want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        try:
            for client, module, how in [(http, httpclient, "HTTP"), (g, grpcclient, "gRPC")]:
                result = client.infer(name, request(module, feeds))
                for out, w in want.items():
                    got = result.as_numpy(out)
                    w = np.asarray(w)
                    assert got is not None and got.shape == w.shape, (how, out, None if got is None else got.shape, w.shape)
                    if w.dtype == np.object_:
                        text = [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)]
                        assert text == list(w.reshape(-1)), (how, out, text, w)
                        continue
                    assert np.allclose(got.astype(np.float64), w.astype(np.float64), atol=1e-5, rtol=1e-4,
                                       equal_nan=True), (how, out, np.abs(got - w).max())
        except Exception as e:
            failures.append(f"{name}: {str(e)[:300]}")
            continue
        served += 1
        print(f"onnx_backend: {name} ok ({len(feeds)} input(s), {len(want)} output(s))")
    print(f"onnx_backend: {served} served as onnxruntime answers, {refused} refused as onnxruntime refuses them")
    assert not failures, "\n".join(failures)
    assert served >= 100, f"only {served} models served"
    print("onnx_backend: all checks passed")


if __name__ == "__main__":
    main()
