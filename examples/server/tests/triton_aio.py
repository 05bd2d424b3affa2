#!/usr/bin/env python3
"""Triton's asyncio clients (`tritonclient.http.aio` on aiohttp, `tritonclient.grpc.aio` on
grpc.aio; pinned with tritonclient[http,grpc] in scripts/requirements.txt) against a running
kiln-server that serves the real-model corpus: what an asyncio service calls. Health, server
and model metadata, model config, the repository index; inference against Python
onnxruntime's golden outputs (HTTP binary and JSON, gzip and deflate both ways; gRPC raw
contents, compressed); 64 calls of single rows gathered at once on each protocol, each answer
checked against its own row, so answers cannot have been crossed by the batcher; streaming
inference through grpc.aio's async iterator, in order, an error in its place; the errors the
clients parse; and statistics timed as Triton times them.

Usage: triton_aio.py HTTP_HOST:PORT GRPC_HOST:PORT CORPUS_DIR MODEL [MODEL ...]
Exits non-zero with a message on the first check that fails.
"""
import asyncio
import json
import os
import sys
import time

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from corpus_golden import check_close, check_timed_stats, load_golden, request, wrong_rank

GATHERED = 64


def rows(corpus, entries, models):
    """The first batched model's golden inputs and outputs, one row at a time."""
    model = next(m for m in models if entries[m]["batch"] > 0)
    inputs, outputs = load_golden(corpus, model)
    n = entries[model]["batch"]
    return model, [({k: v[i:i + 1] for k, v in inputs.items()},
                    {k: v[i:i + 1] for k, v in outputs.items()}) for i in range(n)]


async def gathered(client, module, model, cases, tol, answer_id, **options):
    """GATHERED single-row calls of `model` at once, each checked against its own row."""
    async def one(k):
        sent, want = cases[k % len(cases)]
        result = await client.infer(model, request(module, sent), request_id=f"g{k}", **options)
        assert answer_id(result) == f"g{k}", result.get_response()
        for name, value in want.items():
            check_close(model, name, result.as_numpy(name), value, tol)

    await asyncio.gather(*(one(k) for k in range(GATHERED)))


async def expect_error(call, status=None):
    try:
        await call
    except InferenceServerException as e:
        assert status is None or e.status() == status, (status, e.status(), e.message())
        return e.message()
    raise AssertionError("expected an error, the call succeeded")


async def http_suite(url, corpus, entries, models, since_ms):
    async with httpaio.InferenceServerClient(url=url, conn_timeout=120.0) as client:
        assert await client.is_server_live(), "server not live"
        assert await client.is_server_ready(), "server not ready"
        meta = await client.get_server_metadata()
        assert meta["name"] == "kiln", meta
        index = await client.get_model_repository_index()
        assert set(models) <= {m["name"] for m in index}, index
        for model in models:
            tol = entries[model]["tolerance"]
            assert await client.is_model_ready(model), f"{model} not ready"
            inputs, outputs = load_golden(corpus, model)
            md = await client.get_model_metadata(model)
            assert {i["name"] for i in md["inputs"]} == set(inputs), md
            cfg = await client.get_model_config(model)
            assert cfg["name"] == model and cfg["platform"] == "onnxruntime_onnx", cfg
            for binary in (True, False):
                wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
                result = await client.infer(model, request(httpclient, inputs, binary),
                                            outputs=wanted, request_id=f"{model}-aio")
                assert result.get_response()["id"] == f"{model}-aio", result.get_response()
                for name, want in outputs.items():
                    check_close(model, name, result.as_numpy(name), want, tol)
            for coding in ("gzip", "deflate"):
                result = await client.infer(model, request(httpclient, inputs),
                                            request_compression_algorithm=coding,
                                            response_compression_algorithm=coding)
                for name, want in outputs.items():
                    check_close(model, name, result.as_numpy(name), want, tol)
            stats = (await client.get_inference_statistics(model))["model_stats"]
            check_timed_stats(model, stats[0], since_ms)
            print(f"triton_aio: HTTP {model} ok (metadata, config, binary, JSON, compressed, stats)")

        model, cases = rows(corpus, entries, models)
        await gathered(client, httpclient, model, cases, entries[model]["tolerance"],
                       lambda result: result.get_response()["id"])
        print(f"triton_aio: HTTP {GATHERED} gathered calls of {model} answered each its own row")

        message = await expect_error(client.get_model_metadata("no-such-model"), "404")
        assert "no-such-model" in message, message
        name, value = next(iter(cases[0][0].items()))
        bad = wrong_rank(httpclient, name, value)
        message = await expect_error(client.infer(model, [bad]), "400")
        assert name in message, message


async def grpc_suite(url, corpus, entries, models, since_ms):
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpcaio.InferenceServerClient(url=url, channel_args=options) as client:
        assert await client.is_server_live(), "server not live"
        assert await client.is_server_ready(), "server not ready"
        meta = await client.get_server_metadata(as_json=True)
        assert meta["name"] == "kiln", meta
        index = (await client.get_model_repository_index(as_json=True))["models"]
        assert set(models) <= {m["name"] for m in index}, index
        for model in models:
            tol = entries[model]["tolerance"]
            assert await client.is_model_ready(model), f"{model} not ready"
            inputs, outputs = load_golden(corpus, model)
            md = await client.get_model_metadata(model, as_json=True)
            assert {i["name"] for i in md["inputs"]} == set(inputs), md
            cfg = (await client.get_model_config(model, as_json=True))["config"]
            assert cfg["name"] == model and cfg["platform"] == "onnxruntime_onnx", cfg
            for coding in (None, "gzip", "deflate"):
                result = await client.infer(model, request(grpcclient, inputs),
                                            request_id=f"{model}-aio",
                                            compression_algorithm=coding, client_timeout=120)
                assert result.get_response().id == f"{model}-aio", result.get_response()
                for name, want in outputs.items():
                    check_close(model, name, result.as_numpy(name), want, tol)
            stats = (await client.get_inference_statistics(model, as_json=True))["model_stats"]
            check_timed_stats(model, stats[0], since_ms)
            print(f"triton_aio: gRPC {model} ok (metadata, config, raw, compressed, stats)")

        model, cases = rows(corpus, entries, models)
        tol = entries[model]["tolerance"]
        await gathered(client, grpcclient, model, cases, tol,
                       lambda result: result.get_response().id, client_timeout=120)
        print(f"triton_aio: gRPC {GATHERED} gathered calls of {model} answered each its own row")

        # Streaming: the async iterator's requests answered in order, each its own row; a bad
        # request answered with its error, in its place, and the stream goes on.
        name, value = next(iter(cases[0][0].items()))
        bad = wrong_rank(grpcclient, name, value)
        plan = [(f"s{k}", cases[k % len(cases)]) for k in range(16)]
        plan.insert(5, ("bad", None))

        async def requests():
            for rid, case in plan:
                sent = [bad] if case is None else request(grpcclient, case[0])
                yield {"model_name": model, "inputs": sent, "request_id": rid}

        answers = client.stream_infer(requests(), stream_timeout=120)
        seen = 0
        async for result, error in answers:
            rid, case = plan[seen]
            seen += 1
            if case is None:
                assert result is None and name in error.message(), (rid, result, error)
            else:
                assert error is None, (rid, error)
                assert result.get_response().id == rid, (result.get_response().id, rid)
                for out, want in case[1].items():
                    check_close(model, out, result.as_numpy(out), want, tol)
            if seen == len(plan):
                answers.cancel()
                break
        assert seen == len(plan), f"{seen} of {len(plan)} streamed requests answered"
        print(f"triton_aio: gRPC stream of {len(plan)} answered in order, the error in its place")

        message = await expect_error(client.get_model_metadata("no-such-model"),
                                     "StatusCode.NOT_FOUND")
        assert "no-such-model" in message, message


async def main():
    since_ms = int(time.time() * 1000)
    rest, grpc_url, corpus, models = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    with open(os.path.join(corpus, "corpus.json")) as f:
        entries = {m["name"]: m for m in json.load(f)["models"]}
    await http_suite(rest, corpus, entries, models, since_ms)
    await grpc_suite(grpc_url, corpus, entries, models, since_ms)
    print("triton_aio: all checks passed")


if __name__ == "__main__":
    asyncio.run(main())
