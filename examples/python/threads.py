"""libkiln from a Python thread pool: concurrent calls are batched together.

    KILN_ORT_DIR=.cache/ort/cpu python examples/python/threads.py LIBKILN MODEL.onnx SHA256

Loads the real model (magika: `bytes` int32 [batch, 2048]) verified by its sha256, runs each
input once alone, then 16 threads x 25 requests at once; checks every answer against the
alone run, prints the batch sizes the scheduler formed, and exits 1 unless every answer
matched and some batch held more than one request. Also shows a bad request's error.
"""

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kiln import KilnError, Model, Runtime

THREADS, REQUESTS = 16, 25


def main() -> int:
    library, path, sha256 = sys.argv[1:4]
    runtime = Runtime(library)
    with Model(runtime, path, name="magika", sha256=sha256, max_batch_size=32,
               max_queue_delay_us=2000, version="python") as model:
        print("inputs:", model.inputs, "outputs:", model.outputs, "state:", model.state())
        rng = np.random.default_rng(7)
        rows = [rng.integers(0, 257, size=(1, 2048), dtype=np.int32) for _ in range(THREADS)]
        alone = [model.infer({"bytes": r})["target_label"] for r in rows]

        def work(i: int) -> int:
            bad = 0
            for _ in range(REQUESTS):
                got = model.infer({"bytes": rows[i]}, timeout_ms=30000)["target_label"]
                bad += int(not np.allclose(got, alone[i], atol=1e-4))
            return bad

        with ThreadPoolExecutor(THREADS) as pool:
            bad = sum(pool.map(work, range(THREADS)))

        sizes = model.batch_sizes()
        batches, rows_run = model.counter("batches"), model.counter("rows")
        print(f"{THREADS} threads x {REQUESTS} requests: {bad} mismatched")
        print(f"batches: {batches} for {rows_run} rows (mean {rows_run / max(batches, 1):.2f})")
        print("batch sizes seen:", " ".join(f"{k}:{v}" for k, v in sorted(sizes.items())))

        try:
            model.infer({"bytes": np.zeros((1, 2048), np.float32)})
            print("a float32 input was accepted")
            return 1
        except KilnError as e:
            print("bad request refused:", e)
            if e.name != "dtype mismatch":
                return 1
    batched = any(size > 1 for size in sizes)
    return 0 if bad == 0 and batched else 1


if __name__ == "__main__":
    sys.exit(main())
