"""A checkpoint's network for other tools: ONNX (any runtime) or safetensors (the weights alone).

Both take the network as ``dtrain predict`` runs it: float32 inputs already scaled to [0, 1]
(pixel / 255), ``relu(x @ W + b)`` per hidden layer, then ``softmax(x @ W + b)``. Weights keep
dtrain's (in, out) layout. The packages are an optional extra (``pip install 'dtrain[export]'``),
imported only here, so dtrain itself does not need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dtrain.service.errors import DtrainError
from dtrain.service.paths import check_parent, write_error
from dtrain.service.train.checkpoint import Checkpoint, atomic_write_bytes
from dtrain.workers.model import Layout

FORMATS: tuple[str, ...] = ("onnx", "safetensors")
SUFFIXES = {"onnx": ".onnx", "safetensors": ".safetensors"}
# Opset 17 and IR version 8 (ONNX 1.12, 2022): old enough for every maintained runtime, and
# Gemm, Relu and Softmax(axis) have not changed since.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"


def layer_tensors(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """``dense_0.weight`` (in, out), ``dense_0.bias`` (out,), ... : copies, in layer order."""
    tensors: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(Layout(ckpt.spec).unflatten(ckpt.params)):
        tensors[f"dense_{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        tensors[f"dense_{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    return tensors


def describe(ckpt: Checkpoint) -> dict[str, str]:
    """What a reader needs to run the weights (safetensors metadata holds strings only)."""
    spec = ckpt.spec
    n = len(spec.layer_shapes)
    return {
        "format": "dtrain",
        "input_size": str(spec.input_size),
        "hidden_sizes": json.dumps(list(spec.hidden_sizes)),
        "num_classes": str(spec.num_classes),
        "layers": json.dumps([f"dense_{i}" for i in range(n)]),
        "forward": "h = relu(h @ weight + bias) for every layer but the last, whose output "
        "goes through softmax; weight is (in, out); input is float32 pixel / 255",
    }


def _need(module: str, fmt: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DtrainError(
            f"--format {fmt} needs the {module.split('.')[0]} package: pip install 'dtrain[export]'"
        ) from None


def safetensors_bytes(ckpt: Checkpoint) -> bytes:
    st = _need("safetensors.numpy", "safetensors")
    return bytes(st.save(layer_tensors(ckpt), metadata=describe(ckpt)))


def onnx_bytes(ckpt: Checkpoint) -> bytes:
    """A graph of Gemm (+ Relu) per layer, then Softmax over the classes; batch size free."""
    onnx = _need("onnx", "onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    tensors = layer_tensors(ckpt)
    last = len(ckpt.spec.layer_shapes) - 1
    nodes, h = [], INPUT_NAME
    for i in range(last + 1):
        out = f"dense_{i}.out"
        nodes.append(helper.make_node("Gemm", [h, f"dense_{i}.weight", f"dense_{i}.bias"], [out]))
        h = out
        if i < last:
            nodes.append(helper.make_node("Relu", [h], [f"dense_{i}.relu"]))
            h = f"dense_{i}.relu"
    nodes.append(helper.make_node("Softmax", [h], [OUTPUT_NAME], axis=1))
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "dtrain",
        [helper.make_tensor_value_info(INPUT_NAME, f32, ["batch", ckpt.spec.input_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, f32, ["batch", ckpt.spec.num_classes])],
        initializer=[numpy_helper.from_array(a, name) for name, a in tensors.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
        producer_name="dtrain",
        doc_string=describe(ckpt)["forward"],
    )
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def export(ckpt: Checkpoint, fmt: str, out: Path) -> Path:
    """Write the checkpoint's network to ``out`` in ``fmt``, atomically."""
    if fmt not in FORMATS:
        raise DtrainError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if out.exists() or out.is_symlink():
        # Never replace a file dtrain did not write: the user names another or removes it.
        raise DtrainError(f"{out} already exists: give --out a new file")
    check_parent(out, f"--format {fmt} file")
    data = onnx_bytes(ckpt) if fmt == "onnx" else safetensors_bytes(ckpt)
    try:
        atomic_write_bytes(out, data)
    except OSError as e:
        raise write_error(out, e, f"--format {fmt} file") from e
    return out
