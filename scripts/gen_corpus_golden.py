#!/usr/bin/env python3
"""Golden outputs of the real-model corpus from Python onnxruntime (the release kiln loads).

For every model in testdata/corpus/corpus.json: inputs of the `sample` shapes from a fixed
seed (floats uniform in [0, 1), integer tokens in [0, int_range), scalars as given), run
through onnxruntime's Python API, written as testdata/corpus/golden/<name>.json in the
format of scripts/gen_testdata.py. A batchable model also gets `batch` rows stacked, so the
Rust side checks batched answers against one-at-a-time ones and against Python.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "testdata", "corpus")
NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
      "tensor(int32)": np.int32}


def tensor(a):
    a = np.asarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.reshape(-1).tolist()}


def main():
    with open(os.path.join(CORPUS, "corpus.json")) as f:
        corpus = json.load(f)
    out_dir = os.path.join(CORPUS, "golden")
    os.makedirs(out_dir, exist_ok=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for seed, m in enumerate(corpus["models"]):
        path = os.path.join(CORPUS, "models", m["name"] + ".onnx")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1000 + seed)
        rows = max(m["batch"], 1)
        feeds = {}
        for info in sess.get_inputs():
            spec = m["sample"][info.name]
            dtype = NP[info.type]
            if isinstance(spec, int):
                feeds[info.name] = np.array(spec, dtype=dtype)
                continue
            shape = list(spec)
            if m["batch"]:
                shape[0] = rows
            if dtype in (np.float32, np.float16):
                feeds[info.name] = rng.random(shape, dtype=np.float32).astype(dtype)
            else:
                feeds[info.name] = rng.integers(0, m.get("int_range", 100), shape).astype(dtype)
        names = [o.name for o in sess.get_outputs()]
        outputs = sess.run(names, feeds)
        doc = {
            "inputs": {k: tensor(v) for k, v in feeds.items()},
            "outputs": {n: tensor(v) for n, v in zip(names, outputs)},
        }
        with open(os.path.join(out_dir, m["name"] + ".json"), "w") as f:
            json.dump(doc, f)
    print(f"gen_corpus_golden: {len(corpus['models'])} golden files in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
