"""What both Triton client suites (triton_client.py over HTTP, triton_grpc.py over gRPC) read
from the real-model corpus: the golden inputs and outputs Python onnxruntime recorded, the v2
datatype of a numpy dtype, and the comparison with each model's tolerance; and what both check
of a model's statistics as Triton's tools read them."""
import json
import os
import time

import numpy as np

DTYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
          "int8": "INT8", "uint8": "UINT8", "bool": "BOOL", "object": "BYTES"}


def load_golden(corpus, name):
    with open(os.path.join(corpus, "golden", name + ".json")) as f:
        doc = json.load(f)

    def arr(t):
        return np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])

    return ({k: arr(v) for k, v in doc["inputs"].items()},
            {k: arr(v) for k, v in doc["outputs"].items()})


def request(module, inputs, binary=True):
    """`inputs` (name -> array) as InferInputs of the client `module` (`tritonclient.http` or
    `tritonclient.grpc`); over HTTP, as binary data or JSON."""
    sent = []
    for name, value in inputs.items():
        t = module.InferInput(name, list(value.shape), DTYPES[str(value.dtype)])
        if module.__name__ == "tritonclient.http":
            t.set_data_from_numpy(value, binary_data=binary)
        else:
            t.set_data_from_numpy(value)
        sent.append(t)
    return sent


def wrong_rank(module, name, value):
    """An InferInput of the client `module` for input `name` with one dim more than `value`
    has: a request the server must refuse naming the input."""
    shape = [1] * (value.ndim + 1)
    t = module.InferInput(name, shape, DTYPES[str(value.dtype)])
    t.set_data_from_numpy(value.reshape(-1)[:1].reshape(shape))
    return t


def check_close(model, name, got, want, tol):
    assert got.shape == want.shape, f"{model}/{name}: shape {got.shape} != {want.shape}"
    if want.dtype.kind == "f":
        err = np.abs(got.astype(np.float64) - want) - (tol[0] + tol[1] * np.abs(want))
        assert (err <= 0).all(), f"{model}/{name}: off by {err.max()} over tolerance"
    else:
        assert (got == want).all(), f"{model}/{name}: integers differ"


def load_labels(corpus, entry, output):
    """The labels of `output` the corpus publishes for the model (its package's own class
    names, one per line in testdata/corpus/labels/), or None."""
    pin = entry.get("labels")
    if not pin or pin["output"] != output:
        return None
    # As kiln reads a label file: lines split at "\n" only, a "\r" ending one dropped.
    with open(os.path.join(corpus, "labels", entry["name"] + ".txt"), encoding="utf-8-sig") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def label_file(output):
    """Where kiln reads an output's labels, relative to the model (kiln::labels::label_file)."""
    for c, code in (("%", "%25"), ("/", "%2F"), ("\\", "%5C"), ("\0", "%00")):
        output = output.replace(c, code)
    return f"labels/{output}.txt"


def check_classes(model, name, got, want, tol, batched, k, labels=None):
    """Triton's classification extension: `got` (BYTES, "value:index", and ":label" after it
    for a class `labels` names, as Triton answers with a label file) must be the top `k`
    classes of the golden output `want`, highest first: per row of dim 0 for a batched model
    (each row's other elements flattened), of the whole output otherwise, `k` cut to the
    classes there are. Each value is within the model's tolerance (and the six decimals
    Triton writes) of the golden value at its index and of the golden value of that rank, so
    equal values may come in either order."""
    per_row = batched and want.ndim > 0
    rows = want.reshape(want.shape[0], -1) if per_row else want.reshape(1, -1)
    kk = min(k, rows.shape[1])
    shape = (rows.shape[0], kk) if per_row else (kk,)
    assert got.shape == shape, f"{model}/{name}: classes of shape {got.shape}, not {shape}"
    for r, row in enumerate(rows.astype(np.float64)):
        ranked = np.sort(row)[::-1][:kk]
        for j, s in enumerate(got.reshape(rows.shape[0], kk)[r]):
            text = s.decode() if isinstance(s, bytes) else s
            value, index, *label = text.split(":", 2)
            value, index = float(value), int(index)
            named = labels[index] if labels and index < len(labels) and labels[index] else None
            assert label == ([named] if named else []), f"{model}/{name}: {text} (labels {named!r})"
            slack = tol[0] + tol[1] * abs(ranked[j]) + 1e-6
            assert abs(value - ranked[j]) <= slack, f"{model}/{name}: class {j} is {text}"
            assert abs(row[index] - value) <= slack, f"{model}/{name}: {text} vs {row[index]}"


def check_timed_stats(model, stat, since_ms):
    """A model's statistics (one `model_stats` entry, as the client's JSON: counts are strings
    over gRPC, and a zero field may be left out) after it answered requests since `since_ms`
    (milliseconds since the epoch): requests are timed as Triton times them, so the averages
    Triton's tools divide out (success, queue and compute per request, compute per batch size)
    are real, and `last_inference` is when the model last answered."""
    def duration(d):
        return int(d.get("count", 0)), int(d.get("ns", 0))

    now_ms = time.time() * 1000
    i = stat["inference_stats"]
    ok, ok_ns = duration(i["success"])
    queued, queue_ns = duration(i["queue"])
    computed, compute_ns = duration(i["compute_infer"])
    assert ok > 0 and ok_ns > 0, (model, "success not timed", stat)
    assert queued == ok and computed == ok, (model, "counted per request", stat)
    assert 0 < compute_ns and queue_ns + compute_ns <= ok_ns, (model, "phases within", stat)
    last = int(stat.get("last_inference", 0))
    assert since_ms <= last <= now_ms + 1, (model, "last_inference", since_ms, last, now_ms)
    executions = int(stat["execution_count"])
    per_size = [duration(b["compute_infer"]) for b in stat["batch_stats"]]
    assert sum(n for n, _ in per_size) == executions, (model, "executions", stat)
    assert all(ns > 0 for _, ns in per_size), (model, "batch sizes not timed", stat)
