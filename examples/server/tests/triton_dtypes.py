#!/usr/bin/env python3
"""Every further v2 datatype (FP16, BF16, INT16, UINT16, UINT32, UINT64) through Triton's own
clients against a running kiln-server serving testdata/dtypes.onnx (y16 = 2 * h in float16,
the other inputs returned unchanged by Identity): HTTP with JSON and binary data, gRPC with
raw contents and (for the integer types) typed contents; NaN and infinities in JSON data.
Then BYTES against
testdata/strings.onnx (`echo` = text, `ids` = LabelEncoder of text, `label` = LabelEncoder of
the int64 `n`), every way a Triton client sends strings, and a request of more strings than
the server's limit refused as each client parses it. Then scikit-learn classifiers as
skl2onnx exports them, their probabilities a ZipMap (a sequence of maps): served as
[rows, classes] FP32 in ascending class order, equal to Python onnxruntime's maps, each
class named in classification answers. Then
zero-size dims (no rows; a zero-length sequence), as onnxruntime answers them.

Usage: triton_dtypes.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL STRINGS_MODEL TESTDATA_DIR
"""
import os
import sys

import ml_dtypes
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
import grpc

from corpus_golden import request


def inputs():
    rows = 3
    n = lambda k: np.arange(rows * k).reshape(rows, k)
    return {
        "h": ("FP16", (n(4) * 0.5).astype(np.float16)),
        "bf": ("BF16", (-n(2)).astype(ml_dtypes.bfloat16)),
        "i16": ("INT16", (-n(2) * 300).astype(np.int16)),
        "u16": ("UINT16", (n(2) * 9000).astype(np.uint16)),
        "u32": ("UINT32", (n(2).astype(np.uint32) << 20)),
        "u64": ("UINT64", (n(2).astype(np.uint64) << 40)),
    }


def check(result, ins, how):
    h = ins["h"][1]
    y16 = result.as_numpy("y16")
    assert y16.dtype == np.float16 and (y16 == h * 2).all(), (how, y16)
    for name, (dt, value) in ins.items():
        if name == "h":
            continue
        got = result.as_numpy("out_" + name)
        assert got.shape == value.shape and (got.astype(np.float64) == value.astype(np.float64)).all(), (how, name, got, value)
    print(f"triton_dtypes: {how} ok")


def main():
    http_url, grpc_url, model = sys.argv[1:4]
    ins = inputs()
    http = httpclient.InferenceServerClient(url=http_url)
    md = http.get_model_metadata(model)
    assert [i["datatype"] for i in md["inputs"]] == [dt for dt, _ in ins.values()], md
    cfg = http.get_model_config(model)
    assert [i["data_type"] for i in cfg["input"]] == ["TYPE_" + dt for dt, _ in ins.values()], cfg

    for binary in (True, False):
        req = []
        for name, (dt, value) in ins.items():
            t = httpclient.InferInput(name, list(value.shape), dt)
            t.set_data_from_numpy(value, binary_data=binary or dt == "BF16")
            req.append(t)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ["y16"] + ["out_" + k for k in ins if k != "h"]]
        check(http.infer(model, req, outputs=outs), ins, f"http {'binary' if binary else 'json'}")

    # Not finite: NaN, Infinity and -Infinity as the client's JSON writes them (Python's json,
    # which Triton reads), read exactly (the answer in binary: JSON answers write them as null,
    # which every JSON parser reads).
    odd = dict(ins, h=("FP16", np.array([[np.nan, np.inf, -np.inf, 1.5]] * 3, dtype=np.float16)))
    req = []
    for name, (dt, value) in odd.items():
        t = httpclient.InferInput(name, list(value.shape), dt)
        t.set_data_from_numpy(value, binary_data=dt == "BF16")
        req.append(t)
    y16 = http.infer(model, req, outputs=[httpclient.InferRequestedOutput("y16", binary_data=True)]).as_numpy("y16")
    want = odd["h"][1] * 2
    assert np.isnan(y16[:, 0]).all() and (y16[:, 1:] == want[:, 1:]).all(), y16
    as_json = http.infer(model, req, outputs=[httpclient.InferRequestedOutput("y16", binary_data=False)])
    assert np.isnan(as_json.as_numpy("y16")[:, :3]).all(), as_json.get_response()
    print("triton_dtypes: http json NaN and infinities ok")

    g = grpcclient.InferenceServerClient(url=grpc_url)
    req = []
    for name, (dt, value) in ins.items():
        t = grpcclient.InferInput(name, list(value.shape), dt)
        t.set_data_from_numpy(value)
        req.append(t)
    check(g.infer(model, req), ins, "grpc raw")

    # Typed contents for the integer types; FP16/BF16 have no typed field (raw only), and a
    # request that tries gets INVALID_ARGUMENT.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_url))
    typed = service_pb2.ModelInferRequest(model_name=model)
    field = {"INT16": "int_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents"}
    for name, (dt, value) in ins.items():
        t = typed.inputs.add(name=name, datatype=dt, shape=list(value.shape))
        if dt in field:
            getattr(t.contents, field[dt]).extend(value.reshape(-1).tolist())
    try:
        stub.ModelInfer(typed, timeout=30)
        raise AssertionError("FP16 without contents was served")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "has 0 values" in e.details() or "raw_input_contents" in e.details(), e.details()
    strings(http, g, stub, sys.argv[4])
    classifiers(http, g, sys.argv[5])
    empty_tensors(http, g, sys.argv[5], http_url)
    print("triton_dtypes: all checks passed")


def empty_tensors(http, g, testdata, http_url):
    """Zero-size dims, served as ONNX Runtime and Triton serve them (a detector's zero boxes
    sent on to a classifier, an empty sequence): no rows (magika, strings), and a zero-length
    sequence under rows (testdata/sequence.onnx, whose pooled output is still one row each),
    through both clients, against onnxruntime's own run. kiln refused every one (400, "every
    dim must be at least 1")."""
    cases = [
        ("magika", "real/magika.onnx", {"bytes": np.zeros((0, 2048), np.int32)}),
        ("strings", "strings.onnx", {"text": np.zeros((0, 3), np.object_),
                                     "n": np.zeros((0, 1), np.int64)}),
        ("sequence", "sequence.onnx", {"tokens": np.zeros((0, 5, 8), np.float32)}),
        ("sequence", "sequence.onnx", {"tokens": np.zeros((2, 0, 8), np.float32)}),
    ]
    for model, path, feeds in cases:
        session = ort.InferenceSession(os.path.join(testdata, path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        want = dict(zip(names, session.run(None, feeds)))
        shapes = {k: v.shape for k, v in feeds.items()}
        for client, module, how in [(http, httpclient, "HTTP binary"), (http, httpclient, "HTTP JSON"),
                                    (g, grpcclient, "gRPC")]:
            result = client.infer(model, request(module, feeds, binary=how == "HTTP binary"))
            for name, w in want.items():
                got = result.as_numpy(name)
                assert got is not None and got.shape == w.shape, (model, shapes, how, name, got, w.shape)
                if w.dtype != np.object_:
                    assert np.allclose(got, w, equal_nan=True), (model, shapes, how, name, got, w)
        print(f"triton_dtypes: empty {model} {shapes} ok: {({k: v.shape for k, v in want.items()})}")
    # A request of no rows is answered as it is alone even while others with rows are batched
    # (zipmap.onnx: its ZipMap has no classes to read without a row, so [0, 0]; an empty slice
    # of a batch with rows would be [0, 3]).
    many = httpclient.InferenceServerClient(url=http_url, concurrency=16)
    rows = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    alone = http.infer("zipmap", request(httpclient, {"x": rows[:0]})).as_numpy("probability").shape
    sent = [many.async_infer("zipmap", request(httpclient, {"x": rows[: 2 * (i % 2)]})) for i in range(64)]
    got = [r.get_result().as_numpy("probability").shape for r in sent]
    assert all(g == (alone if i % 2 == 0 else (2, 3)) for i, g in enumerate(got)), (alone, got)
    many.close()
    # An empty tensor's other dims are bounded as if its zero were one: a dim of 2^40 beside a
    # zero is refused by the limit, not handed on to size a model's buffers.
    try:
        http.infer("sequence", request(httpclient, {"tokens": np.zeros((0, 1 << 40, 8), np.float32)}))
        raise AssertionError("a dim of 2^40 beside a zero was served")
    except InferenceServerException as e:
        assert "over the limit" in str(e), e
    print(f"triton_dtypes: empty rows batched apart ({alone} alone and among rows); huge dims beside a zero refused")


def classifiers(http, g, testdata):
    """The onnxruntime wheel's scikit-learn LogisticRegression on iris (fixed [3, 2] input,
    int64 classes) and testdata/zipmap.onnx (string classes, given unsorted, a batch dim):
    labels and probabilities through both clients, against onnxruntime's own run; the top two
    classes by Triton's classification extension, each named by the ZipMap's own class."""
    rng = np.random.default_rng(5)
    for model, path, rows in [("logreg_iris", "real/logreg_iris.onnx", 3), ("zipmap", "zipmap.onnx", 5)]:
        session = ort.InferenceSession(os.path.join(testdata, path), providers=["CPUExecutionProvider"])
        (inp,), (label, probs) = session.get_inputs(), session.get_outputs()
        x = rng.standard_normal((rows, inp.shape[1])).astype(np.float32)
        want_label, maps = session.run(None, {inp.name: x})
        want = np.array([[row[k] for k in sorted(row)] for row in maps], dtype=np.float32)
        # The ZipMap's own classes name its classes; no label file is claimed.
        cfg = http.get_model_config(model)
        assert not cfg["output"][1].get("label_filename"), cfg
        md = http.get_model_metadata(model)
        assert md["outputs"][1] == {"name": probs.name, "datatype": "FP32",
                                  "shape": [rows if model == "logreg_iris" else -1, -1]}, md
        for client, module, how in [(http, httpclient, "HTTP binary"), (http, httpclient, "HTTP JSON"),
                                    (g, grpcclient, "gRPC")]:
            sent = request(module, {inp.name: x}, binary=how == "HTTP binary")
            result = client.infer(model, sent)
            got = result.as_numpy(probs.name)
            assert got.shape == want.shape and np.allclose(got, want, atol=1e-6), (model, how, got, want)
            labels = result.as_numpy(label.name)
            labels = [v.decode() if isinstance(v, bytes) else v for v in labels.reshape(-1)]
            assert labels == list(want_label.reshape(-1)), (model, how, labels, want_label)
            # Triton's classification extension: the top two classes of each row, each named
            # by the ZipMap's own class ("value:index:class"), with no label file. (A model
            # that does not batch, logreg_iris, is classified over its whole output, as in
            # Triton: not rows.)
            if model != "zipmap":
                continue
            asked = [module.InferRequestedOutput(probs.name, class_count=2)]
            top = client.infer(model, request(module, {inp.name: x}, binary=how == "HTTP binary"),
                               outputs=asked).as_numpy(probs.name)
            classes = sorted(maps[0])
            for row, got_row in zip(maps, top.reshape(rows, 2)):
                best = sorted(row, key=lambda k: -row[k])[:2]
                want_top = [f"{row[k]:.6f}:{classes.index(k)}:{k}" for k in best]
                got_top = [v.decode() if isinstance(v, bytes) else v for v in got_row]
                assert got_top == want_top, (model, how, got_top, want_top)
        print(f"triton_dtypes: {model} (ZipMap) ok: {rows} rows x {want.shape[1]} classes")


def strings(http, g, stub, model):
    """BYTES in and out: HTTP JSON and binary, gRPC raw and typed `bytes_contents`; text
    that is not UTF-8 is refused by name."""
    text = np.array([["cat", "x", "ünïcödé"], ["dog", "", "cat"]], dtype=np.object_)
    n = np.array([[1], [5]], dtype=np.int64)
    ids = np.array([[1, -1, 3], [2, -1, 1]], dtype=np.int64)
    label = np.array([[b"one"], [b"other"]], dtype=np.object_)
    md = http.get_model_metadata(model)
    assert [(i["name"], i["datatype"]) for i in md["inputs"]] == [("text", "BYTES"), ("n", "INT64")], md
    cfg = http.get_model_config(model)
    assert cfg["input"][0]["data_type"] == "TYPE_STRING", cfg
    encoded = np.vectorize(lambda s: s.encode("utf-8"), otypes=[np.object_])(text)

    # tritonclient gives BYTES read from JSON as str, from binary or gRPC as bytes (as with
    # Triton itself).
    as_bytes = np.vectorize(lambda s: s if isinstance(s, bytes) else s.encode("utf-8"), otypes=[np.object_])

    def check(result, how):
        echo = as_bytes(result.as_numpy("echo"))
        assert echo.shape == text.shape and (echo == encoded).all(), (how, echo)
        assert (result.as_numpy("ids") == ids).all(), (how, result.as_numpy("ids"))
        assert (as_bytes(result.as_numpy("label")) == label).all(), (how, result.as_numpy("label"))
        print(f"triton_dtypes: BYTES {how} ok")

    for binary in (True, False):
        req = [httpclient.InferInput("text", [2, 3], "BYTES"), httpclient.InferInput("n", [2, 1], "INT64")]
        req[0].set_data_from_numpy(text, binary_data=binary)
        req[1].set_data_from_numpy(n, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in ("echo", "ids", "label")]
        check(http.infer(model, req, outputs=outs), f"http {'binary' if binary else 'json'}")
    req = [grpcclient.InferInput("text", [2, 3], "BYTES"), grpcclient.InferInput("n", [2, 1], "INT64")]
    req[0].set_data_from_numpy(text)
    req[1].set_data_from_numpy(n)
    check(g.infer(model, req), "grpc raw")

    typed = service_pb2.ModelInferRequest(model_name=model)
    t = typed.inputs.add(name="text", datatype="BYTES", shape=[2, 3])
    t.contents.bytes_contents.extend(encoded.reshape(-1).tolist())
    t = typed.inputs.add(name="n", datatype="INT64", shape=[2, 1])
    t.contents.int64_contents.extend(n.reshape(-1).tolist())
    answer = stub.ModelInfer(typed, timeout=30)
    names = [o.name for o in answer.outputs]
    raw = dict(zip(names, answer.raw_output_contents))
    # Triton's raw BYTES: each element a 4-byte little-endian length and its bytes.
    want = b"".join(len(s).to_bytes(4, "little") + s for s in encoded.reshape(-1))
    assert raw["echo"] == want, raw["echo"]
    print("triton_dtypes: BYTES grpc typed ok")

    bad = service_pb2.ModelInferRequest(model_name=model)
    t = bad.inputs.add(name="text", datatype="BYTES", shape=[2, 3])
    t.contents.bytes_contents.extend([b"ok", b"\xff\xfe", b"", b"", b"", b""])
    t = bad.inputs.add(name="n", datatype="INT64", shape=[2, 1])
    t.contents.int64_contents.extend([1, 2])
    try:
        stub.ModelInfer(bad, timeout=30)
        raise AssertionError("text that is not UTF-8 was served")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "text" in e.details() and "UTF-8" in e.details(), e.details()

    # More strings than a request may hold (kiln-server's default --max-string-elements,
    # 1,048,576): refused from the declared shape before any string is made, as each client
    # parses it: HTTP 413 (binary and JSON), gRPC RESOURCE_EXHAUSTED (raw contents).
    rows = (1 << 20) // 3 + 1
    many = np.full((rows, 3), b"", dtype=np.object_)
    few = np.zeros((rows, 1), dtype=np.int64)
    for binary in (True, False):
        req = [httpclient.InferInput("text", [rows, 3], "BYTES"), httpclient.InferInput("n", [rows, 1], "INT64")]
        req[0].set_data_from_numpy(many, binary_data=binary)
        req[1].set_data_from_numpy(few, binary_data=binary)
        try:
            http.infer(model, req)
            raise AssertionError("more strings than max_string_elements were served")
        except InferenceServerException as e:
            assert e.status() == "413", (binary, e.status(), e.message())
            assert "max_string_elements" in e.message(), e.message()
    req = [grpcclient.InferInput("text", [rows, 3], "BYTES"), grpcclient.InferInput("n", [rows, 1], "INT64")]
    req[0].set_data_from_numpy(many)
    req[1].set_data_from_numpy(few)
    try:
        g.infer(model, req)
        raise AssertionError("more strings than max_string_elements were served over gRPC")
    except InferenceServerException as e:
        assert e.status() == "StatusCode.RESOURCE_EXHAUSTED", (e.status(), e.message())
        assert "max_string_elements" in e.message(), e.message()
    print("triton_dtypes: BYTES refusals ok")


if __name__ == "__main__":
    main()
