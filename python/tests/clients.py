"""The installed `kiln-onnx` wheel from a 16-thread pool and from asyncio, against the real
model (magika: `bytes` int32 [batch, 2048] -> `target_label` float32 [batch, 214]).

    python clients.py MODEL.onnx SHA256 STRINGS.onnx STRINGS_SHA256

Run by crates/bindings/tests/python.rs in a fresh venv where only numpy and the wheel are
installed (and from a directory outside the repository, so `import kiln` is the wheel's).
Checks: the bundled libkiln is the one loaded; every answer from 16 threads and from 64
concurrent awaits equals the same input run alone; requests were batched (so the GIL was
released while they waited); outputs are fresh writable arrays; each failure raises its own
exception class; string tensors (testdata/strings.onnx) go in as numpy str/bytes arrays and
come back as object arrays of str. Prints `python clients: ok` and exits 0, else raises.
"""

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import kiln


def main() -> None:
    path, sha256, strings_path, strings_sha256 = sys.argv[1:5]
    assert "site-packages" in kiln.__file__, f"kiln imported from {kiln.__file__}, not the wheel"
    bundled = os.path.join(os.path.dirname(kiln.__file__), "_lib", "libkiln.so.0")
    assert os.path.exists(bundled), "the wheel carries no libkiln"
    runtime = kiln.Runtime()
    model = kiln.Model(runtime, path, name="magika", sha256=sha256, max_batch_size=32,
                       max_queue_delay_us=2000)
    rng = np.random.default_rng(11)
    rows = [rng.integers(0, 257, size=(1, 2048), dtype=np.int32) for _ in range(32)]
    alone = [model.infer({"bytes": r})["target_label"] for r in rows]
    first = alone[0]
    assert first.shape == (1, 214) and first.dtype == np.float32 and first.flags.writeable

    # 16 threads.
    def work(i: int) -> int:
        bad = 0
        for _ in range(20):
            got = model.infer({"bytes": rows[i]}, timeout_ms=30000)["target_label"]
            bad += int(not np.allclose(got, alone[i], atol=1e-4))
        return bad

    with ThreadPoolExecutor(16) as pool:
        bad = sum(pool.map(work, range(16)))
    assert bad == 0, f"{bad} thread answers differ from the same input run alone"
    threads_batched = {n: c for n, c in model.batch_sizes().items() if n > 1}
    assert threads_batched, f"16 threads were never batched: {model.batch_sizes()}"

    # asyncio: 64 concurrent awaits.
    async def many() -> list:
        return await asyncio.gather(
            *(model.infer_async({"bytes": rows[i % 32]}, timeout_ms=30000) for i in range(64))
        )

    before = model.batch_sizes()
    answers = asyncio.run(many())
    for i, out in enumerate(answers):
        assert np.allclose(out["target_label"], alone[i % 32], atol=1e-4), f"await {i} differs"
    after = model.batch_sizes()
    grew = {n: after.get(n, 0) - before.get(n, 0) for n in after if n > 1}
    assert any(c > 0 for c in grew.values()), f"64 awaits were never batched: {after}"

    # Typed exceptions.
    def raises(cls, fn):
        try:
            fn()
        except cls as e:
            assert isinstance(e, kiln.KilnError) and e.status == cls.status and e.message, e
            return str(e)
        raise AssertionError(f"{cls.__name__} was not raised")

    raises(kiln.UnknownInput, lambda: model.infer({"nope": rows[0]}))
    raises(kiln.ShapeMismatch, lambda: model.infer({"bytes": np.zeros((1, 7), np.int32)}))
    raises(kiln.DtypeMismatch, lambda: model.infer({"bytes": rows[0].astype(np.int64)}))
    raises(kiln.ChecksumMismatch, lambda: kiln.Model(runtime, path, sha256="0" * 64))
    raises(kiln.KilnIOError, lambda: kiln.Model(runtime, path + ".missing", sha256=sha256))
    model.close()

    # String tensors (strings.onnx: `text` [batch, 3] -> `echo`, `ids`; `n` -> `label`).
    strings = kiln.Model(runtime, strings_path, name="strings", sha256=strings_sha256)
    assert strings.inputs[0][1] == np.dtype(object), strings.inputs
    text = np.array([["cat", "dog", "ünïcödé"], ["bird", "", "cat"]])
    out = strings.infer({"text": text, "n": np.array([[1], [7]], np.int64)})
    assert out["echo"].dtype == object and out["echo"].tolist() == text.tolist(), out["echo"]
    assert out["ids"].tolist() == [[1, 2, 3], [-1, -1, 1]], out["ids"]
    assert out["label"].tolist() == [["one"], ["other"]], out["label"]
    as_bytes = strings.infer({"text": np.array([[b"dog", b"cat", b"x"]], dtype=object), "n": np.array([[2]], np.int64)})
    assert as_bytes["ids"].tolist() == [[2, 1, -1]] and as_bytes["label"].tolist() == [["two"]], as_bytes
    raises(kiln.InvalidArgument, lambda: strings.infer({"text": np.array([["a\0b", "c", "d"]]), "n": np.array([[1]], np.int64)}))
    strings.close()
    print("batch sizes (threads):", threads_batched, "(awaits):", {n: c for n, c in grew.items() if c})
    print("python clients: ok")


if __name__ == "__main__":
    main()
