"""A Python server with adaptive batching: a BentoML service around onnxruntime, configured as
BentoML's documentation recommends for adaptive batching (`batchable=True` with a
`max_batch_size` and `max_latency_ms`, `traffic.concurrency` set to the batch size, one
session per worker).

BentoML's batchable APIs take their own JSON (`{"x": [[...one row...]]}`: the input named by
the method's parameter, batch dimension first), not the v2 protocol, so the benchmark sends the
same numbers in that form; the answer is the output array as JSON.

    KILN_PEER_MODEL=model.onnx KILN_PEER_THREADS=1 KILN_PEER_WORKERS=2 KILN_PEER_MAX_BATCH=64 \
        bentoml serve bentoml_service:Model --host 127.0.0.1 --port 8002
"""
import os

import bentoml
import numpy as np

MAX_BATCH = int(os.environ.get("KILN_PEER_MAX_BATCH", "64"))
WORKERS = int(os.environ.get("KILN_PEER_WORKERS", "2"))
DTYPE = np.int32 if os.environ.get("KILN_PEER_DTYPE") == "INT32" else np.float32


@bentoml.service(
    workers=WORKERS,
    resources={"cpu": str(WORKERS)},
    traffic={"timeout": 60, "concurrency": MAX_BATCH * WORKERS},
    logging={"access": {"enabled": False}},
)
class Model:
    def __init__(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("KILN_PEER_THREADS", "1"))
        self.session = ort.InferenceSession(
            os.environ["KILN_PEER_MODEL"], opts, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=10000)
    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(x, dtype=DTYPE)})[0]
