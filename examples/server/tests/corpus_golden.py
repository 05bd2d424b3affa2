"""What both Triton client suites (triton_client.py over HTTP, triton_grpc.py over gRPC) read
from the real-model corpus: the golden inputs and outputs Python onnxruntime recorded, the v2
datatype of a numpy dtype, and the comparison with each model's tolerance."""
import json
import os

import numpy as np

DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32"}


def load_golden(corpus, name):
    with open(os.path.join(corpus, "golden", name + ".json")) as f:
        doc = json.load(f)

    def arr(t):
        return np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])

    return ({k: arr(v) for k, v in doc["inputs"].items()},
            {k: arr(v) for k, v in doc["outputs"].items()})


def check_close(model, name, got, want, tol):
    assert got.shape == want.shape, f"{model}/{name}: shape {got.shape} != {want.shape}"
    if want.dtype.kind == "f":
        err = np.abs(got.astype(np.float64) - want) - (tol[0] + tol[1] * np.abs(want))
        assert (err <= 0).all(), f"{model}/{name}: off by {err.max()} over tolerance"
    else:
        assert (got == want).all(), f"{model}/{name}: integers differ"
