"""The common Python setup, as tutorials deploy a model: FastAPI + uvicorn + onnxruntime, the
model loaded once at start-up, one request per `session.run`, JSON in and out.

It speaks the same Open Inference Protocol v2 JSON as kiln-server (same request bytes, same
answer shape), so the benchmark sends both the identical body. The handler is a plain `def`,
which FastAPI runs on its thread pool (ONNX Runtime releases the GIL while it runs), and
uvicorn runs `--workers` processes, one session each: the usual production recipe.

    KILN_PEER_MODEL=model.onnx KILN_PEER_THREADS=1 \
        uvicorn fastapi_server:app --host 127.0.0.1 --port 8001 --workers 2
"""
import os
from typing import Any, List, Optional

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class InferInput(BaseModel):
    name: str
    shape: List[int]
    datatype: str
    data: List[Any]


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: List[InferInput]


def load_session():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("KILN_PEER_THREADS", "1"))
    return ort.InferenceSession(
        os.environ["KILN_PEER_MODEL"], opts, providers=["CPUExecutionProvider"]
    )


session = load_session()
model_name = os.environ.get("KILN_PEER_NAME", "model")
app = FastAPI()


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
def infer(name: str, req: InferRequest):
    if name != model_name:
        raise HTTPException(404, f"unknown model {name}")
    feeds = {}
    for i in req.inputs:
        if i.datatype not in DTYPES:
            raise HTTPException(400, f"unsupported datatype {i.datatype}")
        feeds[i.name] = np.asarray(i.data, dtype=DTYPES[i.datatype]).reshape(i.shape)
    outputs = session.run(None, feeds)
    return {
        "id": req.id,
        "model_name": name,
        "model_version": "1",
        "outputs": [
            {
                "name": meta.name,
                "shape": list(out.shape),
                "datatype": NAMES.get(out.dtype, str(out.dtype)),
                "data": out.ravel().tolist(),
            }
            for meta, out in zip(session.get_outputs(), outputs)
        ],
    }
