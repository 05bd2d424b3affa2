#!/usr/bin/env python3
"""Triton's own HTTP client (`tritonclient[http]`, pinned in scripts/requirements.txt) against
a running kiln-server that serves the real-model corpus: health, server and model metadata,
model config, inference with JSON and with binary tensors (plain, and gzip and deflate both
ways) compared to Python onnxruntime's golden outputs, output selection with binary_data,
Triton's classification extension (class_count), statistics timed as Triton times them, the
request's timeout parameter, the errors the client parses, and what it is told of Triton's
extensions kiln does not serve.

Usage: triton_client.py HOST:PORT CORPUS_DIR MODEL [MODEL ...]
Exits non-zero with a message on the first check that fails.
"""
import json
import os
import sys
import time

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from corpus_golden import (DTYPES, check_classes, check_close, check_timed_stats, label_file,
                           load_golden, load_labels)


def main():
    since_ms = int(time.time() * 1000)
    url, corpus, models = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(os.path.join(corpus, "corpus.json")) as f:
        entries = {m["name"]: m for m in json.load(f)["models"]}
    client = httpclient.InferenceServerClient(url=url, network_timeout=120.0)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    meta = client.get_server_metadata()
    assert meta["name"] == "kiln", meta
    for ext in ("model_repository", "model_configuration", "binary_tensor_data",
                "schedule_policy", "classification"):
        assert ext in meta["extensions"], meta

    for model in models:
        entry = entries[model]
        tol = entry["tolerance"]
        assert client.is_model_ready(model), f"{model} not ready"
        md = client.get_model_metadata(model)
        inputs, outputs = load_golden(corpus, model)
        assert {i["name"] for i in md["inputs"]} == set(inputs), md
        for i in md["inputs"]:
            assert i["datatype"] == DTYPES[str(inputs[i["name"]].dtype)], (model, i)
        cfg = client.get_model_config(model)
        assert cfg["name"] == model and cfg["platform"] == "onnxruntime_onnx", cfg
        batched = entry["batch"] > 0
        assert (cfg["max_batch_size"] > 0) == batched, cfg
        if batched:
            # Triton numbers priority levels from 1; kiln's default level is its highest.
            assert cfg["dynamic_batching"]["default_priority_level"] == "1", cfg
        for i in cfg["input"]:
            rank = inputs[i["name"]].ndim - (1 if batched else 0)
            assert len(i["dims"]) == rank, (model, i)
        # An output's label file, where the corpus publishes one (its package's class names).
        for o in cfg["output"]:
            want_file = label_file(o["name"]) if load_labels(corpus, entry, o["name"]) else ""
            assert o["label_filename"] == want_file, (model, o)

        # JSON and binary data, plain and compressed both ways (the client's
        # request_compression_algorithm / response_compression_algorithm, as Triton serves).
        for binary, coding in ((False, None), (True, None), (False, "gzip"), (True, "deflate")):
            req = []
            for name, value in inputs.items():
                t = httpclient.InferInput(name, list(value.shape), DTYPES[str(value.dtype)])
                t.set_data_from_numpy(value, binary_data=binary)
                req.append(t)
            wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
            result = client.infer(model, req, outputs=wanted, request_id=f"{model}-{binary}",
                                  request_compression_algorithm=coding,
                                  response_compression_algorithm=coding)
            assert result.get_response()["id"] == f"{model}-{binary}", result.get_response()
            for name, want in outputs.items():
                check_close(model, name, result.as_numpy(name), want, tol)

        # Only the first output, as binary data: exactly that one comes back.
        first = next(iter(outputs))
        req = []
        for name, value in inputs.items():
            t = httpclient.InferInput(name, list(value.shape), DTYPES[str(value.dtype)])
            t.set_data_from_numpy(value, binary_data=True)
            req.append(t)
        result = client.infer(model, req, outputs=[httpclient.InferRequestedOutput(first, binary_data=True)])
        names = [o["name"] for o in result.get_response()["outputs"]]
        assert names == [first], names
        check_close(model, first, result.as_numpy(first), outputs[first], tol)

        # Triton's classification extension (class_count): the first output's top classes,
        # as JSON and as binary data, beside the other outputs' values.
        for binary in (False, True):
            wanted = [httpclient.InferRequestedOutput(first, binary_data=binary, class_count=3)]
            wanted += [httpclient.InferRequestedOutput(n, binary_data=binary)
                       for n in list(outputs)[1:]]
            result = client.infer(model, req, outputs=wanted)
            check_classes(model, first, result.as_numpy(first), outputs[first], tol, batched, 3,
                          load_labels(corpus, entry, first))
            for name in list(outputs)[1:]:
                check_close(model, name, result.as_numpy(name), outputs[name], tol)

        # A bad shape: the client raises with the server's 400 and message.
        name, value = next((n, v) for n, v in inputs.items() if v.ndim > 0)
        bad = value.reshape(-1)[: max(value.size - 1, 1)]
        t = httpclient.InferInput(name, [1] * (value.ndim + 1), DTYPES[str(value.dtype)])
        t.set_data_from_numpy(bad[:1].reshape([1] * (value.ndim + 1)))
        others = []
        for n, v in inputs.items():
            if n != name:
                o = httpclient.InferInput(n, list(v.shape), DTYPES[str(v.dtype)])
                o.set_data_from_numpy(v)
                others.append(o)
        try:
            client.infer(model, [t] + others)
            raise AssertionError(f"{model}: a wrong rank was served")
        except InferenceServerException as e:
            assert e.status() == "400", (model, e.status(), e.message())
            assert name in e.message(), e.message()
        stats = client.get_inference_statistics(model)["model_stats"]
        assert len(stats) == 1 and stats[0]["name"] == model, stats
        check_timed_stats(model, stats[0], since_ms)
        print(f"triton_client: {model} ok (metadata, config, JSON, binary, compressed, outputs, "
              "classes, errors, stats)")

    try:
        client.get_model_metadata("no-such-model")
        raise AssertionError("an unknown model answered")
    except InferenceServerException as e:
        assert e.status() == "404", (e.status(), e.message())
        assert "no-such-model" in e.message(), e.message()
    try:
        client.is_model_ready("no-such-model")
    except InferenceServerException:
        pass
    # The request's own timeout (Triton's schedule-policy parameter, in microseconds) is its
    # deadline: 1 µs has passed before the request is queued (504); a minute is served.
    model = models[0]
    inputs, outputs = load_golden(corpus, model)
    req = []
    for name, value in inputs.items():
        t = httpclient.InferInput(name, list(value.shape), DTYPES[str(value.dtype)])
        t.set_data_from_numpy(value, binary_data=True)
        req.append(t)
    try:
        client.infer(model, req, timeout=1)
        raise AssertionError("a request past its timeout was served")
    except InferenceServerException as e:
        assert e.status() == "504", (e.status(), e.message())
    result = client.infer(model, req, timeout=60_000_000)
    first = next(iter(outputs))
    check_close(model, first, result.as_numpy(first), outputs[first], entries[model]["tolerance"])
    # Triton's extensions kiln does not serve (not in GET /v2's list) answer 501 with a
    # message the client shows, not an empty body ("client received an empty response").
    for call, words in [
        (lambda: client.get_system_shared_memory_status(), "system shared memory"),
        (lambda: client.register_system_shared_memory("r", "/kiln", 64), "system shared memory"),
        (lambda: client.get_cuda_shared_memory_status(), "CUDA shared memory"),
        (lambda: client.get_log_settings(), "logging"),
        (lambda: client.update_log_settings({"log_verbose_level": 1}), "logging"),
        (lambda: client.get_trace_settings(), "trace"),
        (lambda: client.get_trace_settings(model_name=model), "trace"),
    ]:
        try:
            call()
            raise AssertionError(f"{words}: an extension kiln does not serve answered")
        except InferenceServerException as e:
            assert e.status() == "501", (words, e.status(), e.message())
            assert words in (e.message() or ""), (words, e.message())
    print("triton_client: all checks passed")


if __name__ == "__main__":
    main()
