"""The Triton Inference Server contender's model: Triton's python backend running an ONNX
model with onnxruntime, as a Triton user serves an ONNX file without Triton's onnxruntime
backend (the nvidia-pytriton wheel ships the server and the python backend only).

The peer benchmark (`benches/peers.rs`) writes a model repository at bench time:

    <repo>/<model>/config.pbtxt      backend "python", max_batch_size, dynamic_batching,
                                     instance_group [{count: 2, kind: KIND_CPU}]
    <repo>/<model>/1/model.py        this file
    <repo>/<model>/1/model.onnx      the bench model

Each of the 2 instances is its own stub process with one single-threaded session
(`intra_op_threads` in the config's parameters). With dynamic batching Triton hands `execute`
every request of a batch at once; the usual recipe stacks them along dim 0, runs once, and
splits the outputs back per request.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        feeds = {}
        rows = []
        for name in self.inputs:
            arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            rows = [len(a) for a in arrays]
            feeds[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        outs = self.session.run(self.outputs, feeds)
        responses = []
        start = 0
        for n in rows:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + n]))
                for name, out in zip(self.outputs, outs)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
