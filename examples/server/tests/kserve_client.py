#!/usr/bin/env python3
"""KServe's own Python SDK clients (`kserve`: InferenceRESTClient with the v2 protocol and
with the v1 protocol, and InferenceGRPCClient, pinned in scripts/kserve-requirements.txt)
against a running kiln-server
that serves the real-model corpus and testdata/strings.onnx: the health calls (which read
KServe's JSON bodies, `{"live": true}` and `{"ready": true}`), model readiness, inference with
JSON and with binary tensors over REST and with typed and raw contents over gRPC compared to
Python onnxruntime's golden outputs, output selection, BYTES both ways, and the errors each
client raises. This is what a KServe transformer, an InferenceGraph step or a user's script
calls a v2 predictor with. The v1 suite sends each corpus model whose inputs all have a batch
dim its golden rows as `{"instances": [...]}` and checks `{"predictions": [...]}` row by row
against the same outputs, then every corpus model's whole tensors as TensorFlow Serving's
columns, `{"inputs": ...}` answered `{"outputs": ...}` (v1 liveness `GET /`, model readiness,
BYTES as strings and as binary values, the errors).

Usage: kserve_client.py HTTP_HOST:PORT GRPC_HOST:PORT CORPUS_DIR STRINGS_MODEL MODEL [MODEL ...]
Exits non-zero with a message on the first check that fails.
"""
import asyncio
import base64
import json
import os
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

from corpus_golden import DTYPES, check_close, load_golden


def request(model, inputs, binary, outputs=None, request_id=None):
    items = []
    for name, value in inputs.items():
        t = InferInput(name, list(value.shape), DTYPES[str(value.dtype)])
        t.set_data_from_numpy(value, binary_data=binary)
        items.append(t)
    wanted = None
    if outputs is not None:
        wanted = [RequestedOutput(n, parameters={"binary_data": binary}) for n in outputs]
    return InferRequest(model_name=model, infer_inputs=items, request_outputs=wanted,
                        request_id=request_id)


def check_answer(model, response, rid, outputs, tol):
    """`response` is the answer to request `rid`: every output, each equal to onnxruntime's."""
    assert response.id == rid, (model, response.id)
    got = outputs_of(response)
    assert set(got) == set(outputs), (model, set(got))
    for name, want in outputs.items():
        check_close(model, name, got[name], want, tol)


def wrong_rank(inputs):
    """The name of an input and `inputs` with that one given one dim too many."""
    name, value = next((n, v) for n, v in inputs.items() if v.ndim > 0)
    bad = dict(inputs)
    bad[name] = value.reshape(-1)[:1].reshape([1] * (value.ndim + 1))
    return name, bad


def outputs_of(response):
    return {o.name: o.as_numpy() for o in response.outputs}


async def rest_suite(rest, base, corpus, entries, models):
    assert await rest.is_server_live(base) is True, "REST: server not live"
    assert await rest.is_server_ready(base) is True, "REST: server not ready"
    assert await rest.is_model_ready(base, "no-such-model") is False, "REST: unknown model ready"
    for model in models:
        tol = entries[model]["tolerance"]
        assert await rest.is_model_ready(base, model) is True, f"REST: {model} not ready"
        inputs, outputs = load_golden(corpus, model)
        # KServe's REST client refuses FP16 in JSON itself ("use the binary data format").
        fp16 = any(v.dtype == np.float16 for v in inputs.values())
        for binary in ((True,) if fp16 else (False, True)):
            rid = f"{model}-{binary}"
            got = await rest.infer(base, request(model, inputs, binary, list(outputs), rid),
                                   model_name=model)
            check_answer(model, got, rid, outputs, tol)
        # Only the first output, as binary data.
        first = next(iter(outputs))
        got = await rest.infer(base, request(model, inputs, True, [first]), model_name=model)
        assert [o.name for o in got.outputs] == [first], [o.name for o in got.outputs]
        check_close(model, first, got.outputs[0].as_numpy(), outputs[first], tol)
        # A wrong rank: HTTPStatusError carrying the server's 400 and its message.
        name, bad = wrong_rank(inputs)
        try:
            await rest.infer(base, request(model, bad, True), model_name=model)
            raise AssertionError(f"REST: {model}: a wrong rank was served")
        except httpx.HTTPStatusError as e:
            assert e.response.status_code == 400, (model, e.response.status_code, str(e))
            assert name in str(e), str(e)
        print(f"kserve_client: REST {model} ok (ready, JSON, binary, outputs, errors)")
    model = models[0]
    inputs, _ = load_golden(corpus, model)
    try:
        await rest.infer(base, request("no-such-model", inputs, True), model_name="no-such-model")
        raise AssertionError("REST: an unknown model answered")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 404, (e.response.status_code, str(e))
        assert "no-such-model" in str(e), str(e)


async def grpc_suite(g, corpus, entries, models):
    assert await g.is_server_live() is True, "gRPC: server not live"
    assert await g.is_server_ready() is True, "gRPC: server not ready"
    for model in models:
        tol = entries[model]["tolerance"]
        assert await g.is_model_ready(model) is True, f"gRPC: {model} not ready"
        inputs, outputs = load_golden(corpus, model)
        # binary_data=False sends typed contents (fp32_contents, int64_contents, ...);
        # True sends raw_input_contents. KServe's client has no typed field for FP16.
        fp16 = any(v.dtype == np.float16 for v in inputs.values())
        for binary in ((True,) if fp16 else (False, True)):
            rid = f"{model}-{binary}"
            got = await g.infer(request(model, inputs, binary, request_id=rid))
            check_answer(model, got, rid, outputs, tol)
        first = next(iter(outputs))
        got = await g.infer(request(model, inputs, True, [first]))
        assert [o.name for o in got.outputs] == [first], [o.name for o in got.outputs]
        check_close(model, first, got.outputs[0].as_numpy(), outputs[first], tol)
        name, bad = wrong_rank(inputs)
        try:
            await g.infer(request(model, bad, True))
            raise AssertionError(f"gRPC: {model}: a wrong rank was served")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (model, e.code(), e.details())
            assert name in e.details(), e.details()
        print(f"kserve_client: gRPC {model} ok (ready, typed, raw, outputs, errors)")
    inputs, _ = load_golden(corpus, models[0])
    try:
        await g.infer(request("no-such-model", inputs, True))
        raise AssertionError("gRPC: an unknown model answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())


def v1_plan(meta, inputs):
    """For a model described by kiln's v2 `meta`, with golden `inputs`: the number of rows, and
    which outputs are one row per instance (kiln's rule: every output of a model whose dim 0
    is dynamic everywhere, or an output whose declared dim 0 is the row count); None when the
    inputs cannot be sent as v1 rows (a scalar input, inputs of different dim 0, a fixed dim 0
    that is not the row count) or an output could not be split between several rows."""
    if any(v.ndim == 0 for v in inputs.values()):
        return None
    rows = {v.shape[0] for v in inputs.values()}
    if len(rows) != 1:
        return None
    rows = rows.pop()
    declared = {t["name"]: t["shape"] for t in meta["inputs"] + meta["outputs"]}
    if any(declared[n][0] not in (-1, rows) for n in inputs):
        return None
    batch_dim = all(s and s[0] == -1 for s in declared.values())
    split = {t["name"]: batch_dim or t["shape"][:1] == [rows] for t in meta["outputs"]}
    if rows > 1 and not all(split.values()):
        return None
    return rows, split


async def v1_suite(v1, base, corpus, entries, models):
    """KServe's REST client with protocol="v1": what a KServe transformer's default predictor
    call (`--predictor_protocol v1`) and InferenceGraph steps on v1 send."""
    assert await v1.is_server_live(base) is True, "v1: server not live (GET /)"
    try:
        await v1.is_model_ready(base, "no-such-model")
        raise AssertionError("v1: an unknown model's readiness answered")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 404, (e.response.status_code, str(e))
    served = 0
    for model in models:
        tol = entries[model]["tolerance"]
        async with httpx.AsyncClient() as h:
            meta = (await h.get(f"{base}/v2/models/{model}")).json()
        inputs, outputs = load_golden(corpus, model)
        plan = v1_plan(meta, inputs)
        if plan is None:
            print(f"kserve_client: v1 {model} skipped (its inputs are not rows)")
            continue
        rows, split = plan
        assert await v1.is_model_ready(base, model) is True, f"v1: {model} not ready"
        if len(inputs) == 1:
            (only,) = inputs.values()
            instances = [only[i].tolist() for i in range(rows)]
        else:
            instances = [{n: v[i].tolist() for n, v in inputs.items()} for i in range(rows)]
        got = await v1.infer(base, {"instances": instances}, model_name=model)
        predictions = got["predictions"]
        assert len(predictions) == rows, (model, len(predictions))
        for i, p in enumerate(predictions):
            if len(outputs) > 1:
                assert set(p) == set(outputs), (model, set(p))
            for name, want in outputs.items():
                value = p[name] if len(outputs) > 1 else p
                want = want[i] if split[name] else want
                check_close(model, name, np.array(value, dtype=want.dtype), want, tol)
        served += 1
        print(f"kserve_client: v1 {model} ok ({rows} instance(s), {len(outputs)} output(s))")
    assert served >= 5, f"v1: only {served} corpus models could be sent as rows"
    await v1_columns_suite(v1, base, corpus, entries, models)
    # A ragged instance and a missing input: 400s carrying kiln's reason.
    for body, why in [({"instances": [[[1.0, 2.0], [3.0]]]}, "not a tensor"),
                      ({"instances": [{"no-such-input": [1]}]}, "unknown input")]:
        try:
            await v1.infer(base, body, model_name=models[0])
            raise AssertionError(f"v1: {body} was served")
        except httpx.HTTPStatusError as e:
            assert e.response.status_code == 400, (e.response.status_code, str(e))
            assert why in str(e), str(e)
    try:
        await v1.infer(base, {"instances": [[1]]}, model_name="no-such-model")
        raise AssertionError("v1: an unknown model answered")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 404, (e.response.status_code, str(e))


async def v1_columns_suite(v1, base, corpus, entries, models):
    """TensorFlow Serving's columnar form over v1, `{"inputs": ...}` answered
    `{"outputs": ...}`: each input's whole tensor by name (or bare, for a one-input model), so
    every corpus model can be sent, those whose inputs are not rows (a recurrent model's state,
    a scalar sample rate) too; each output compared whole with onnxruntime's."""
    for model in models:
        tol = entries[model]["tolerance"]
        inputs, outputs = load_golden(corpus, model)
        if len(inputs) == 1:
            (only,) = inputs.values()
            body = {"inputs": only.tolist()}
        else:
            body = {"inputs": {n: v.tolist() for n, v in inputs.items()}}
        got = (await v1.infer(base, body, model_name=model))["outputs"]
        if len(outputs) > 1:
            assert set(got) == set(outputs), (model, set(got))
        for name, want in outputs.items():
            value = got[name] if len(outputs) > 1 else got
            check_close(model, name, np.array(value, dtype=want.dtype), want, tol)
        print(f"kserve_client: v1 columns {model} ok ({len(inputs)} input(s), "
              f"{len(outputs)} output(s))")


async def v1_classifiers_suite(v1, base, testdata):
    """scikit-learn classifiers over v1 rows (their ZipMap probabilities served as [rows,
    classes]): the onnxruntime wheel's LogisticRegression on iris, whose input is a fixed
    [3, 2] (so exactly three instances), and testdata/zipmap.onnx (string classes, a batch
    dim), each prediction compared with Python onnxruntime's golden label and probabilities."""
    for model in ("logreg_iris", "zipmap"):
        with open(os.path.join(testdata, "golden", f"{model}.json")) as f:
            golden = json.load(f)
        ((name, x),) = golden["inputs"].items()
        rows, width = x["shape"]
        instances = [x["data"][i * width:(i + 1) * width] for i in range(rows)]
        (label_name, label), (probs_name, probs) = golden["outputs"].items()
        classes = probs["shape"][1]
        got = (await v1.infer(base, {"instances": instances}, model_name=model))["predictions"]
        assert len(got) == rows, (model, got)
        for i, p in enumerate(got):
            assert p[label_name] == label["data"][i], (model, i, p, label)
            want = probs["data"][i * classes:(i + 1) * classes]
            assert np.allclose(p[probs_name], want, atol=1e-6), (model, i, p, want)
        print(f"kserve_client: v1 {model} (ZipMap) ok: {rows} instances x {classes} classes")


async def v1_strings_suite(v1, base, model):
    """BYTES over v1: objects naming both inputs, strings in and out, as JSON strings and as
    TensorFlow Serving's binary values ({"b64": ...}), as rows and as columns."""
    def b64(s):
        return {"b64": base64.b64encode(s.encode()).decode()}

    want = [{"echo": ["cat", "x", "ünïcödé"], "ids": [1, -1, 3], "label": ["one"]},
            {"echo": ["dog", "", "cat"], "ids": [2, -1, 1], "label": ["other"]}]
    for binary in (False, True):
        text = [["cat", "x", "ünïcödé"], ["dog", "", "cat"]]
        if binary:
            text = [[b64(s) for s in row] for row in text]
        got = await v1.infer(base, {"instances": [{"text": text[0], "n": [1]},
                                                  {"text": text[1], "n": [7]}]},
                             model_name=model)
        assert got["predictions"] == want, (binary, got)
        got = await v1.infer(base, {"inputs": {"text": text, "n": [[1], [7]]}},
                             model_name=model)
        assert got["outputs"] == {k: [w[k] for w in want] for k in want[0]}, (binary, got)
    print("kserve_client: v1 BYTES ok (strings and binary values, rows and columns)")


async def strings_suite(rest, base, g, model):
    """BYTES in and out (testdata/strings.onnx: `echo` = text, `ids` = LabelEncoder of text,
    `label` = LabelEncoder of the int64 `n`), JSON and binary over REST, typed and raw over
    gRPC."""
    text = np.array([["cat", "x", "ünïcödé"], ["dog", "", "cat"]], dtype=np.object_)
    n = np.array([[1], [7]], dtype=np.int64)
    ids = [[1, -1, 3], [2, -1, 1]]

    def req(binary):
        a = InferInput("text", [2, 3], "BYTES")
        a.set_data_from_numpy(text, binary_data=binary)
        b = InferInput("n", [2, 1], "INT64")
        b.set_data_from_numpy(n, binary_data=binary)
        outs = [RequestedOutput(o, parameters={"binary_data": binary})
                for o in ("echo", "ids", "label")]
        return InferRequest(model_name=model, infer_inputs=[a, b], request_outputs=outs)

    def text_of(v):
        return [[s.decode() if isinstance(s, bytes) else s for s in row] for row in v.tolist()]

    for how, call in [("REST JSON", lambda: rest.infer(base, req(False), model_name=model)),
                      ("REST binary", lambda: rest.infer(base, req(True), model_name=model)),
                      ("gRPC typed", lambda: g.infer(req(False))),
                      ("gRPC raw", lambda: g.infer(req(True)))]:
        got = outputs_of(await call())
        assert text_of(got["echo"]) == text.tolist(), (how, got["echo"])
        assert got["ids"].tolist() == ids, (how, got["ids"])
        assert text_of(got["label"]) == [["one"], ["other"]], (how, got["label"])
    print(f"kserve_client: BYTES ok (REST JSON and binary, gRPC typed and raw)")


async def main():
    http_url, grpc_url, corpus, strings, models = (sys.argv[1], sys.argv[2], sys.argv[3],
                                                   sys.argv[4], sys.argv[5:])
    testdata = os.path.dirname(os.path.normpath(corpus))
    with open(os.path.join(corpus, "corpus.json")) as f:
        entries = {m["name"]: m for m in json.load(f)["models"]}
    base = f"http://{http_url}"
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
    g = InferenceGRPCClient(grpc_url, timeout=120)
    try:
        await rest_suite(rest, base, corpus, entries, models)
        await v1_suite(v1, base, corpus, entries, models)
        await grpc_suite(g, corpus, entries, models)
        await strings_suite(rest, base, g, strings)
        await v1_strings_suite(v1, base, strings)
        await v1_classifiers_suite(v1, base, testdata)
    finally:
        await rest.close()
        await v1.close()
        await g.close()
    print("kserve_client: all checks passed")


if __name__ == "__main__":
    asyncio.run(main())
