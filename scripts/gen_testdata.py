#!/usr/bin/env python3
"""Write kiln's test models and their golden outputs into testdata/.

Every model is built with the `onnx` helper API from fixed seeds, so two runs write the same
bytes. Golden outputs come from Python onnxruntime (the same 1.31.1 release the Rust side
loads) and are stored as JSON: {"inputs": {name: tensor}, "outputs": {name: tensor}} where a
tensor is {"dtype": "float32", "shape": [...], "data": [...flat, row-major...]}.

Usage: gen_testdata.py OUT_DIR [REAL_MODEL ...]
  REAL_MODEL: extra .onnx files (e.g. the magika model) that get golden outputs too.
"""
import json
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 18)]
IR_VERSION = 9
DTYPES = {"float32": "float32", "int64": "int64", "int32": "int32", "object": "string"}


def save(model, out_dir, name):
    onnx.checker.check_model(model)
    path = os.path.join(out_dir, name + ".onnx")
    onnx.save(model, path)
    return path


def make(name, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION, producer_name="kiln-gen")


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp(rng):
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal((32,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "b2")
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
    ]
    return make("mlp", nodes, [f32("x", ["batch", 16])], [f32("y", ["batch", 4])], [w1, b1, w2, b2])


def fixed_batch(_rng):
    two = numpy_helper.from_array(np.full((1, 8), 2.0, np.float32), "two")
    one = numpy_helper.from_array(np.full((1, 8), 1.0, np.float32), "one")
    nodes = [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])]
    return make("fixed_batch", nodes, [f32("x", [1, 8])], [f32("y", [1, 8])], [two, one])


def multi_io(_rng):
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Mul", ["a", "b"], ["prod"]),
        helper.make_node("ReduceSum", ["a", "axes"], ["rowsum"], keepdims=1),
    ]
    return make(
        "multi_io",
        nodes,
        [f32("a", ["batch", 4]), f32("b", ["batch", 4])],
        [f32("sum", ["batch", 4]), f32("prod", ["batch", 4]), f32("rowsum", ["batch", 1])],
        [axes],
    )


def sequence(rng):
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["tokens", "w"], ["proj"]),
        helper.make_node("ReduceMean", ["tokens", "axes"], ["pooled"], keepdims=0),
    ]
    return make(
        "sequence",
        nodes,
        [f32("tokens", ["batch", "seq", 8])],
        [f32("proj", ["batch", "seq", 4]), f32("pooled", ["batch", 8])],
        [w, axes],
    )


def int64_model(rng):
    table = numpy_helper.from_array(rng.standard_normal((100, 4)).astype(np.float32), "table")
    two = numpy_helper.from_array(np.array(2, np.int64), "two")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], axis=0),
        helper.make_node("Mul", ["ids", "two"], ["doubled"]),
    ]
    return make(
        "int64",
        nodes,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 6])],
        [f32("embedded", ["batch", 6, 4]), helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 6])],
        [table, two],
    )


def dtypes_model(_rng):
    """Every element type kiln serves beyond the common ones, through real kernels: float16
    through Cast + Mul (y16 = 2 * h), bfloat16 and the 16/32/64-bit unsigned and int16 ones
    through Identity. Its outputs are exact, so the Rust test needs no golden file."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [
        helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["h32", "two"], ["d32"]),
        helper.make_node("Cast", ["d32"], ["y16"], to=TensorProto.FLOAT16),
    ]
    io = {"bf": TensorProto.BFLOAT16, "i16": TensorProto.INT16, "u16": TensorProto.UINT16,
          "u32": TensorProto.UINT32, "u64": TensorProto.UINT64}
    for name in io:
        nodes.append(helper.make_node("Identity", [name], ["out_" + name]))
    inputs = [helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["batch", 4])]
    outputs = [helper.make_tensor_value_info("y16", TensorProto.FLOAT16, ["batch", 4])]
    for name, ty in io.items():
        inputs.append(helper.make_tensor_value_info(name, ty, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info("out_" + name, ty, ["batch", 2]))
    return make("dtypes", nodes, inputs, outputs, [two])


def strings_model(_rng):
    """String tensors (the v2 protocol's BYTES) through real kernels: `text` [batch, 3] comes
    back as `echo` (Identity) and as `ids` (ai.onnx.ml LabelEncoder: "cat" 1, "dog" 2,
    "ünïcödé" 3, anything else -1), and an int64 `n` is turned into the strings `label`
    (LabelEncoder the other way: 1 "one", 2 "two", else "other"). Exact outputs: no golden
    file."""
    keys = ["cat", "dog", "ünïcödé"]
    nodes = [
        helper.make_node("Identity", ["text"], ["echo"]),
        helper.make_node("LabelEncoder", ["text"], ["ids"], domain="ai.onnx.ml",
                         keys_strings=keys, values_int64s=[1, 2, 3], default_int64=-1),
        helper.make_node("LabelEncoder", ["n"], ["label"], domain="ai.onnx.ml",
                         keys_int64s=[1, 2], values_strings=["one", "two"], default_string="other"),
    ]
    text = TensorProto.STRING
    graph = helper.make_graph(
        nodes, "strings",
        [helper.make_tensor_value_info("text", text, ["batch", 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("echo", text, ["batch", 3]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
         helper.make_tensor_value_info("label", text, ["batch", 1])],
    )
    opsets = OPSET + [helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="kiln-gen")


def zipmap_model(rng):
    """A classifier as skl2onnx exports one by default: a LinearClassifier over `x` [batch, 4]
    whose classes are strings, its probabilities through a ZipMap, so `probability` is a
    sequence of maps (one per row, class -> probability) beside the `label` tensor. The
    classes are given unsorted (`cat`, `ant`, `bee`): kiln serves the maps as [rows, classes]
    in ascending class order, which the golden file records."""
    classes = ["cat", "ant", "bee"]
    nodes = [
        helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                         classlabels_strings=classes,
                         coefficients=rng.standard_normal(12).astype(np.float32).tolist(),
                         intercepts=[0.1, -0.2, 0.3], post_transform="SOFTMAX"),
        helper.make_node("ZipMap", ["scores"], ["probability"], domain="ai.onnx.ml",
                         classlabels_strings=classes),
    ]
    maps = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(
        nodes, "zipmap", [f32("x", ["batch", 4])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
         helper.make_value_info("probability", maps)],
    )
    opsets = OPSET + [helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="kiln-gen")


def sparse_model(_rng):
    """A model with a sparse tensor input: `a` sparse_tensor(float) [2, 3] times `b` f32 [3, 2]
    (onnxruntime's contrib SparseToDenseMatMul). ONNX Runtime runs it with a sparse value
    bound to `a`; no v2 datatype carries one, so kiln must refuse it at load rather than
    report it Ready and fail every request."""
    a = helper.make_value_info("a", helper.make_sparse_tensor_type_proto(TensorProto.FLOAT, [2, 3]))
    nodes = [helper.make_node("SparseToDenseMatMul", ["a", "b"], ["y"], domain="com.microsoft")]
    graph = helper.make_graph(nodes, "sparse", [a, f32("b", [3, 2])], [f32("y", [2, 2])])
    opsets = OPSET + [helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="kiln-gen")


def slow_model(_rng):
    """Compute that takes a while in next to no memory: a Loop of 2,000 steps of
    y = tanh(y @ w) (one 512×512 weight), about a GFLOP a row."""
    w = numpy_helper.from_array(
        (np.random.default_rng(7).standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32), "w"
    )
    steps = numpy_helper.from_array(np.array(2000, np.int64), "steps")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["y_in", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["y_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            f32("y_in", ["batch", 512]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), f32("y_out", ["batch", 512])],
    )
    nodes = [helper.make_node("Loop", ["steps", "", "x"], ["y"], body=body)]
    return make("slow", nodes, [f32("x", ["batch", 512])], [f32("y", ["batch", 512])], [w, steps])


def random_input(rng, inp):
    """An input tensor for `inp` (an onnxruntime NodeArg) with dynamic dims filled in."""
    dims = []
    for i, d in enumerate(inp.shape):
        if isinstance(d, int):
            dims.append(d)
        else:
            dims.append(3 if i == 0 else 5)
    if inp.type == "tensor(float)":
        return rng.standard_normal(dims).astype(np.float32)
    if inp.type == "tensor(int64)":
        return rng.integers(0, 100, dims).astype(np.int64)
    if inp.type == "tensor(int32)":
        return rng.integers(0, 257, dims).astype(np.int32)
    raise SystemExit(f"no random input for {inp.name}: {inp.type}")


def as_json(arr):
    if isinstance(arr, list):
        # A sequence of maps (ZipMap): kiln serves it as [rows, classes], ascending classes.
        arr = np.array([[row[k] for k in sorted(row)] for row in arr], dtype=np.float32)
    kind = DTYPES[arr.dtype.name]
    data = arr.reshape(-1).tolist()
    return {"dtype": kind, "shape": list(arr.shape), "data": data}


def write_golden(model_path, golden_path, seed):
    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feeds = {i.name: random_input(rng, i) for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    doc = {
        "model": os.path.basename(model_path),
        "onnxruntime": ort.__version__,
        "inputs": {k: as_json(v) for k, v in feeds.items()},
        "outputs": {k: as_json(v) for k, v in zip(names, outs)},
    }
    with open(golden_path, "w") as f:
        json.dump(doc, f)


def main():
    out_dir = sys.argv[1]
    os.makedirs(os.path.join(out_dir, "golden"), exist_ok=True)
    builders = {"mlp": mlp, "fixed_batch": fixed_batch, "multi_io": multi_io, "sequence": sequence, "int64": int64_model,
                "zipmap": zipmap_model}
    for seed, (name, build) in enumerate(builders.items()):
        path = save(build(np.random.default_rng(seed)), out_dir, name)
        write_golden(path, os.path.join(out_dir, "golden", name + ".json"), 100 + seed)

    # A model for every further element type (exact outputs: no golden file).
    save(dtypes_model(None), out_dir, "dtypes")
    save(strings_model(None), out_dir, "strings")
    # A model whose rows take long to compute (for shutdown under a running batch).
    save(slow_model(None), out_dir, "slow")
    # A model ONNX Runtime runs but kiln cannot feed (a sparse tensor input).
    save(sparse_model(None), out_dir, "sparse")

    # Broken artifacts: a model cut in half, and bytes that are no protobuf at all.
    with open(os.path.join(out_dir, "mlp.onnx"), "rb") as f:
        good = f.read()
    with open(os.path.join(out_dir, "truncated.onnx"), "wb") as f:
        f.write(good[: len(good) // 2])
    with open(os.path.join(out_dir, "garbage.onnx"), "wb") as f:
        f.write(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())

    # A scikit-learn classifier as the onnxruntime wheel ships it (LogisticRegression on iris,
    # its probabilities a ZipMap), from the pinned onnxruntime in this venv.
    iris = os.path.join(out_dir, "real", "logreg_iris.onnx")
    os.makedirs(os.path.dirname(iris), exist_ok=True)
    shutil.copyfile(os.path.join(os.path.dirname(ort.__file__), "datasets", "logreg_iris.onnx"), iris)
    for i, real in enumerate(sys.argv[2:] + [iris]):
        stem = os.path.splitext(os.path.basename(real))[0]
        write_golden(real, os.path.join(out_dir, "golden", stem + ".json"), 200 + i)


if __name__ == "__main__":
    main()
