#!/usr/bin/env python3
"""Write the benchmark models into OUT_DIR: one of each kind batching treats differently.

- tabular_mlp.onnx: 32 -> 64 -> 64 -> 8 MLP. Tiny work per row, so a batch-1 run is mostly
  fixed overhead: batching gains the most (tens of times).
- mobilenet.onnx: a MobileNet-v1-style stack (depthwise-separable convs, 3x64x64 input, width
  0.5). Moderate work per image; batching gains about 2x.
- convnet.onnx: plain 3x3 convolutions on 3x64x64 (64-256 channels). Compute-bound already at
  batch 1; batching gains little.

Random weights from fixed seeds (He init); the benchmarks measure speed, not accuracy.
Usage: gen_benchmodels.py OUT_DIR
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Graph:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def weight(self, shape, fan_in):
        w = (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        n = self.name("w")
        self.inits.append(numpy_helper.from_array(w, n))
        return n

    def bias(self, c):
        n = self.name("b")
        self.inits.append(numpy_helper.from_array(np.zeros(c, np.float32), n))
        return n

    def op(self, kind, inputs, **attrs):
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, group=1):
        w = self.weight((cout, cin // group, k, k), cin // group * k * k)
        y = self.op("Conv", [x, w, self.bias(cout)], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)
        return self.op("Relu", [y])

    def dense(self, x, cin, cout, relu=True):
        y = self.op("Gemm", [x, self.weight((cin, cout), cin), self.bias(cout)])
        return self.op("Relu", [y]) if relu else y

    def save(self, path, inp, in_shape, out, out_shape):
        self.nodes.append(helper.make_node("Identity", [out], ["y"]))
        g = helper.make_graph(
            self.nodes,
            os.path.basename(path),
            [helper.make_tensor_value_info(inp, TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
            initializer=self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9, producer_name="kiln-bench")
        onnx.checker.check_model(m)
        onnx.save(m, path)


def tabular_mlp(out):
    g = Graph(1)
    h = g.dense("x", 32, 64)
    h = g.dense(h, 64, 64)
    g.save(out, "x", ["batch", 32], g.dense(h, 64, 8, relu=False), ["batch", 8])


def mobilenet(out):
    g = Graph(2)
    x = g.conv("x", 3, 16, 3, stride=2)
    for cin, cout, s in [(16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]:
        x = g.conv(x, cin, cin, 3, stride=s, group=cin)
        x = g.conv(x, cin, cout, 1)
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    g.save(out, "x", ["batch", 3, 64, 64], g.dense(x, 512, 100, relu=False), ["batch", 100])


def convnet(out):
    g = Graph(3)
    x = g.conv("x", 3, 64, 3)
    x = g.conv(x, 64, 128, 3, stride=2)
    x = g.conv(x, 128, 256, 3, stride=2)
    x = g.conv(x, 256, 256, 3)
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    g.save(out, "x", ["batch", 3, 64, 64], g.dense(x, 256, 10, relu=False), ["batch", 10])


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    tabular_mlp(os.path.join(out, "tabular_mlp.onnx"))
    mobilenet(os.path.join(out, "mobilenet.onnx"))
    convnet(os.path.join(out, "convnet.onnx"))
