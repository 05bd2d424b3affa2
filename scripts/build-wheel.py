#!/usr/bin/env python3
"""Builds the Python wheel `kiln-onnx` (import name `kiln`): python/kiln/ with the freshly
built libkiln inside (kiln/_lib/libkiln.so.0), so `pip install kiln_onnx-*.whl` is all a
Python caller needs besides ONNX Runtime (found through KILN_ORT_DIR, ORT_DYLIB_PATH, ...).

    scripts/build-wheel.py --lib target/release/libkiln.so --out target/wheels

A wheel is a zip with the package, METADATA, WHEEL and RECORD (PEP 427): written here with the
standard library only, so building needs no backend from the network. The tag is
`py3-none-linux_x86_64`: pure-Python code (ctypes) and one native library for this platform.
Prints the wheel's path.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import pathlib
import platform
import re
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME, DIST = "kiln-onnx", "kiln_onnx"


def version() -> str:
    cargo = (ROOT / "Cargo.toml").read_text()
    found = re.search(r'^version = "([^"]+)"', cargo, re.M)
    if not found:
        sys.exit("build-wheel: no version in Cargo.toml")
    package = (ROOT / "python/kiln/__init__.py").read_text()
    declared = re.search(r'^__version__ = "([^"]+)"', package, re.M)
    if not declared or declared.group(1) != found.group(1):
        sys.exit(f"build-wheel: python/kiln/__init__.py __version__ must be {found.group(1)}")
    return found.group(1)


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--lib", required=True, help="libkiln.so to bundle")
    args.add_argument("--out", required=True, help="directory for the wheel")
    opts = args.parse_args()
    ver = version()
    arch = platform.machine()
    tag = f"py3-none-linux_{arch}"
    files: dict[str, bytes] = {}
    for src in sorted((ROOT / "python/kiln").rglob("*")):
        if src.is_file() and "__pycache__" not in src.parts:
            files[f"kiln/{src.relative_to(ROOT / 'python/kiln').as_posix()}"] = src.read_bytes()
    files["kiln/_lib/libkiln.so.0"] = pathlib.Path(opts.lib).read_bytes()
    readme = (
        "kiln from Python: verified ONNX models with batched inference, through libkiln's C ABI "
        "(bundled). numpy in, numpy out; thread-safe, GIL released while waiting; asyncio helper; "
        "typed exceptions per status.\n"
    )
    info = f"{DIST}-{ver}.dist-info"
    files[f"{info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {ver}\n"
        "Summary: Verified ONNX model loading and batched inference (kiln, through libkiln)\n"
        "License: Apache-2.0\n"
        "Requires-Python: >=3.9\n"
        "Requires-Dist: numpy>=1.22\n"
        "Description-Content-Type: text/plain\n\n" + readme
    ).encode()
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: kiln scripts/build-wheel.py\nRoot-Is-Purelib: false\nTag: {tag}\n"
    ).encode()
    files[f"{info}/top_level.txt"] = b"kiln\n"
    record = [record_line(p, d) for p, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = pathlib.Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{DIST}-{ver}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            entry = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            entry.external_attr = (0o755 if path.endswith(".so.0") else 0o644) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(entry, data)
    print(wheel)


if __name__ == "__main__":
    main()
