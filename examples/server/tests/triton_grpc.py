#!/usr/bin/env python3
"""Triton's own gRPC client (`tritonclient[grpc]`, pinned in scripts/requirements.txt) against
a running kiln-server that serves the real-model corpus: health, server and model metadata,
model config, inference with raw contents (what the client sends; plain, gzip and deflate)
and with typed contents (what KServe's clients send, through the client's own generated stub)
compared to Python onnxruntime's golden outputs, output selection, Triton's classification
extension (class_count), statistics, the repository
index, deadlines (grpc-timeout and the request's timeout parameter), the admin rule, the gRPC
status codes the client parses, grpc.health.v1 as a Kubernetes probe calls it, and streaming
inference (ModelStreamInfer) through the client's start_stream / async_stream_infer, plain and
compressed.

Usage: triton_grpc.py HOST:PORT CORPUS_DIR MODEL [MODEL ...]
Exits non-zero with a message on the first check that fails.
"""
import json
import os
import queue
import sys
import time

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from corpus_golden import (DTYPES, check_classes, check_close, check_timed_stats, label_file,
                           load_golden, load_labels, request, wrong_rank)

TYPED_FIELD = {"FP32": "fp32_contents", "INT64": "int64_contents", "INT32": "int_contents"}


def expect_error(code, call):
    try:
        call()
    except InferenceServerException as e:
        assert e.status() == f"StatusCode.{code}", (code, e.status(), e.message())
        return e.message()
    raise AssertionError(f"expected {code}, the call succeeded")


def health(channel, service):
    """grpc.health.v1.Health/Check, hand-encoded (HealthCheckRequest.service = 1, string;
    HealthCheckResponse.status = 1, enum: 1 SERVING, 2 NOT_SERVING)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    name = service.encode()
    reply = check(b"\x0a" + bytes([len(name)]) + name if name else b"", timeout=10)
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(reply, reply)


def main():
    since_ms = int(time.time() * 1000)
    url, corpus, models = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(os.path.join(corpus, "corpus.json")) as f:
        entries = {m["name"]: m for m in json.load(f)["models"]}
    # gRPC's default 4 MiB receive cap is below the batched answer of the OCR recognizers
    # (2 x 40 x 18710 floats); Triton users raise it the same way.
    client = grpcclient.InferenceServerClient(
        url=url, channel_args=[("grpc.max_receive_message_length", 64 << 20)])
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "kiln", meta
    for ext in ("model_repository", "model_configuration", "binary_tensor_data", "statistics",
                "schedule_policy", "classification"):
        assert ext in meta["extensions"], meta

    channel = grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert health(channel, "") == "SERVING"
    assert health(channel, "inference.GRPCInferenceService") == "SERVING"
    assert health(channel, models[0]) == "SERVING"
    try:
        health(channel, "no-such-model")
        raise AssertionError("an unknown service was healthy")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e

    for model in models:
        entry = entries[model]
        tol = entry["tolerance"]
        assert client.is_model_ready(model), f"{model} not ready"
        md = client.get_model_metadata(model, as_json=True)
        inputs, outputs = load_golden(corpus, model)
        assert {i["name"] for i in md["inputs"]} == set(inputs), md
        for i in md["inputs"]:
            assert i["datatype"] == DTYPES[str(inputs[i["name"]].dtype)], (model, i)
        cfg = client.get_model_config(model, as_json=True)["config"]
        assert cfg["name"] == model and cfg["platform"] == "onnxruntime_onnx", cfg
        batched = entry["batch"] > 0
        assert (int(cfg.get("max_batch_size", 0)) > 0) == batched, cfg
        for i in cfg["input"]:
            rank = inputs[i["name"]].ndim - (1 if batched else 0)
            assert len(i.get("dims", [])) == rank, (model, i)
        assert bool(cfg.get("dynamic_batching")) == batched, cfg
        # An output's label file, where the corpus publishes one (its package's class names).
        for o in cfg["output"]:
            want_file = label_file(o["name"]) if load_labels(corpus, entry, o["name"]) else ""
            assert o.get("label_filename", "") == want_file, (model, o)
        if batched:
            # The client's JSON of the ModelConfig message (uint64 as a string).
            assert cfg["dynamic_batching"]["default_priority_level"] == "1", cfg

        # The client's own way: raw_input_contents in, raw_output_contents out.
        req = request(grpcclient, inputs)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs]
        result = client.infer(model, req, outputs=wanted, request_id=f"{model}-raw")
        assert result.get_response().id == f"{model}-raw", result.get_response()
        for name, want in outputs.items():
            check_close(model, name, result.as_numpy(name), want, tol)
        # The message compressed (the client's compression_algorithm), as Triton accepts it.
        for coding in ("gzip", "deflate"):
            result = client.infer(model, req, outputs=wanted, compression_algorithm=coding)
            for name, want in outputs.items():
                check_close(model, name, result.as_numpy(name), want, tol)

        # Typed contents, as KServe's clients send them, through the generated stub.
        # (FP16 has no typed field in the protocol: raw only.)
        if all(DTYPES[str(v.dtype)] in TYPED_FIELD for v in inputs.values()):
            typed = service_pb2.ModelInferRequest(model_name=model, id="typed")
            for name, value in inputs.items():
                dt = DTYPES[str(value.dtype)]
                t = typed.inputs.add(name=name, datatype=dt, shape=list(value.shape))
                getattr(t.contents, TYPED_FIELD[dt]).extend(value.reshape(-1).tolist())
            reply = stub.ModelInfer(typed, timeout=120)
            assert reply.id == "typed" and reply.model_name == model, reply
            assert len(reply.raw_output_contents) == len(reply.outputs), reply
            got = grpcclient.InferResult(reply)
            for name, want in outputs.items():
                check_close(model, name, got.as_numpy(name), want, tol)

        # Only the first output: exactly that one comes back.
        first = next(iter(outputs))
        result = client.infer(model, req, outputs=[grpcclient.InferRequestedOutput(first)])
        names = [o.name for o in result.get_response().outputs]
        assert names == [first], names
        check_close(model, first, result.as_numpy(first), outputs[first], tol)

        # Triton's classification extension (class_count): the first output's top classes,
        # beside the other outputs' values.
        wanted = [grpcclient.InferRequestedOutput(first, class_count=3)]
        wanted += [grpcclient.InferRequestedOutput(n) for n in list(outputs)[1:]]
        result = client.infer(model, req, outputs=wanted)
        check_classes(model, first, result.as_numpy(first), outputs[first], tol, batched, 3,
                          load_labels(corpus, entry, first))
        for name in list(outputs)[1:]:
            check_close(model, name, result.as_numpy(name), outputs[name], tol)

        # A wrong rank: INVALID_ARGUMENT naming the input.
        name, value = next((n, v) for n, v in inputs.items() if v.ndim > 0)
        t = wrong_rank(grpcclient, name, value)
        others = request(grpcclient, {n: v for n, v in inputs.items() if n != name})
        msg = expect_error("INVALID_ARGUMENT", lambda: client.infer(model, [t] + others))
        assert name in msg, msg

        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
        assert len(stats) == 1 and stats[0]["name"] == model, stats
        assert int(stats[0]["inference_count"]) >= 3, stats
        assert int(stats[0]["inference_stats"]["success"]["count"]) >= 3, stats
        check_timed_stats(model, stats[0], since_ms)
        print(f"triton_grpc: {model} ok (metadata, config, raw, compressed, typed, outputs, classes, "
              "errors, stats)")

    index = client.get_model_repository_index(as_json=True)["models"]
    assert set(models) <= {m["name"] for m in index}, index
    assert all(m["state"] == "READY" for m in index), index
    msg = expect_error("NOT_FOUND", lambda: client.get_model_metadata("no-such-model"))
    assert "no-such-model" in msg, msg
    expect_error("NOT_FOUND", lambda: client.infer("no-such-model", req))
    # The repository calls follow the REST admin rule: off without --admin.
    expect_error("PERMISSION_DENIED", lambda: client.unload_model(models[0]))
    # What kiln does not serve answers UNIMPLEMENTED, as a client expects, saying what instead.
    for call, words in [
        (lambda: client.get_system_shared_memory_status(), "system shared memory"),
        (lambda: client.register_cuda_shared_memory("r", b"", 0, 64), "CUDA shared memory"),
        (lambda: client.get_log_settings(), "logging"),
        (lambda: client.get_trace_settings(), "trace"),
    ]:
        message = expect_error("UNIMPLEMENTED", call)
        assert words in message, (words, message)
    # A message over --max-body-mib is refused before it is decoded.
    name, value = next(iter(load_golden(corpus, models[0])[0].items()))
    huge = grpcclient.InferInput(name, [33 << 18], "FP32")
    huge.set_data_from_numpy(np.zeros(33 << 18, dtype=np.float32))
    expect_error("RESOURCE_EXHAUSTED", lambda: client.infer(models[0], [huge]))
    # ... and so is one that inflates past it (33 MiB of zeros gzip to some 33 KiB).
    msg = expect_error("RESOURCE_EXHAUSTED",
                       lambda: client.infer(models[0], [huge], compression_algorithm="gzip"))
    assert "inflates past" in msg, msg
    # A client deadline reaches the server as grpc-timeout; a generous one is served.
    inputs, outputs = load_golden(corpus, models[0])
    result = client.infer(models[0], request(grpcclient, inputs), client_timeout=60)
    first = next(iter(outputs))
    check_close(models[0], first, result.as_numpy(first), outputs[first], entries[models[0]]["tolerance"])
    # The request's own timeout (Triton's schedule-policy parameter, in microseconds) is its
    # deadline too: 1 µs has passed before the request is queued; a minute is served.
    msg = expect_error("DEADLINE_EXCEEDED", lambda: client.infer(models[0], request(grpcclient, inputs), timeout=1))
    assert "deadline" in msg, msg
    result = client.infer(models[0], request(grpcclient, inputs), timeout=60_000_000)
    check_close(models[0], first, result.as_numpy(first), outputs[first], entries[models[0]]["tolerance"])
    stream_suite(client, corpus, entries, models)
    print("triton_grpc: all checks passed")


def stream_suite(client, corpus, entries, models):
    """ModelStreamInfer through the client's own streaming API (start_stream,
    async_stream_infer): every corpus model on one stream, answered in request order (as
    Triton answers a stream) and each marked final, equal to onnxruntime's; a bad request
    answered with its error, in its place, while the stream goes on; and requests sent
    together on a stream batched together."""
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    for model in models:
        inputs, outputs = load_golden(corpus, model)
        rid = f"{model}-stream"
        client.async_stream_infer(model, request(grpcclient, inputs), request_id=rid,
                                  outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
        sent.append((rid, model, outputs))
        if len(sent) == 2:
            # A wrong rank, between good requests: an error on the stream, which goes on.
            inputs, _ = load_golden(corpus, models[0])
            name, value = next((n, v) for n, v in inputs.items() if v.ndim > 0)
            bad = wrong_rank(grpcclient, name, value)
            client.async_stream_infer(models[0], [bad], request_id="bad")
            sent.append(("bad", None, None))
    for rid, model, outputs in sent:
        result, error = answers.get(timeout=120)
        if model is None:
            assert result is None and name in error.message(), (rid, result, error)
            continue
        assert error is None, (rid, error)
        response = result.get_response()
        assert response.id == rid, f"answered {response.id} where {rid} was due"
        assert response.parameters["triton_final_response"].bool_param, response.parameters
        for out, want in outputs.items():
            check_close(model, out, result.as_numpy(out), want, entries[model]["tolerance"])
    # Many at once of one model, the stream otherwise idle: they batch together.
    inputs, _ = load_golden(corpus, models[0])
    before = client.get_inference_statistics(models[0], as_json=True)["model_stats"][0]
    burst = 32
    for k in range(burst):
        client.async_stream_infer(models[0], request(grpcclient, inputs), request_id=f"burst-{k}")
    got = []
    for _ in range(burst):
        result, error = answers.get(timeout=120)
        assert error is None, error
        got.append(result.get_response().id)
    client.stop_stream()
    assert got == [f"burst-{k}" for k in range(burst)], got
    after = client.get_inference_statistics(models[0], as_json=True)["model_stats"][0]
    runs = int(after["execution_count"]) - int(before["execution_count"])
    assert runs < burst, f"{burst} requests sent together on a stream ran in {runs} batches"
    # A compressed stream (the client's compression_algorithm, as Triton accepts it): every
    # corpus model's request inflated and answered as sent plain, in order.
    for coding in ("gzip", "deflate"):
        packed = queue.Queue()
        client.start_stream(callback=lambda result, error: packed.put((result, error)),
                            compression_algorithm=coding)
        for model in models:
            inputs, outputs = load_golden(corpus, model)
            client.async_stream_infer(model, request(grpcclient, inputs), request_id=f"{model}-{coding}",
                                      outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
        for model in models:
            result, error = packed.get(timeout=120)
            assert error is None, (model, coding, error)
            assert result.get_response().id == f"{model}-{coding}", result.get_response().id
            _, outputs = load_golden(corpus, model)
            for out, want in outputs.items():
                check_close(model, out, result.as_numpy(out), want, entries[model]["tolerance"])
        client.stop_stream()
    print(f"triton_grpc: stream ok ({len(models)} models, an error, {burst} requests in {runs} "
          "batches, gzip and deflate streams)")


if __name__ == "__main__":
    main()
