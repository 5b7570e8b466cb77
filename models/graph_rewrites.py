"""How an exported model stores its weights on disk; compute is float32 whichever way they are stored.

- fp32: as computed.
- fp16: every float initializer stored as float16, then a Cast back to float32 (half the file).
- int8-scaled: every weight of two or more dimensions stored as int8 with one float32 scale per output channel
  (symmetric, |w| max -> 127), then Cast and Mul back to float32; vectors (BatchNorm, biases) as fp16. A quarter
  of the file: what lets an ensemble of two ResNet50s ship in one ~48 MB artifact.

ONNX Runtime folds the Casts and Muls of constants when it builds a session. Readers that want the plain weights
(the INT8 quantizer, TensorRT's parser, the torch backend) call `restore_fp32_weights`. No torch here: the runtime
backends import this module.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

FP32_SUFFIX = "__fp32"  # the float32 value that feeds consumers of a stored initializer
CAST_SUFFIX = "__cast"  # int8-scaled: the int8 values cast to float32, before scaling
SCALE_SUFFIX = "__scale"  # int8-scaled: per-output-channel scales

WeightFormat = Literal["fp32", "fp16", "int8-scaled"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = ("fp16", "int8-scaled", "fp32")


class WeightStorageError(ValueError):
    pass


def _float_initializers(model: onnx.ModelProto) -> list[tuple[int, onnx.TensorProto]]:
    return [(index, init) for index, init in enumerate(model.graph.initializer) if init.data_type == TensorProto.FLOAT]


def _feed_consumers_through(model: onnx.ModelProto, renamed: dict[str, str], decoders: list[onnx.NodeProto]) -> None:
    graph = model.graph
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
    nodes = decoders + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def _store_half(model: onnx.ModelProto, index: int, init: onnx.TensorProto) -> list[onnx.NodeProto]:
    half = numpy_helper.to_array(init).astype(np.float16)
    if not np.all(np.isfinite(half)):
        raise WeightStorageError(f"initializer {init.name} overflows float16; store the weights as fp32")
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(half, init.name))
    return [helper.make_node("Cast", [init.name], [init.name + FP32_SUFFIX], to=TensorProto.FLOAT,
                             name=f"{init.name}{FP32_SUFFIX}_cast")]


def _store_int8(model: onnx.ModelProto, index: int, init: onnx.TensorProto) -> list[onnx.NodeProto]:
    values = numpy_helper.to_array(init).astype(np.float32)
    channel_max = np.abs(values.reshape(values.shape[0], -1)).max(axis=1)
    # An all-zero channel keeps scale 1 (its values quantize to 0 either way) rather than dividing by zero.
    scale = np.where(channel_max > 0, channel_max / 127.0, 1.0).astype(np.float32)
    scale = scale.reshape((-1,) + (1,) * (values.ndim - 1))
    quantized = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(quantized, init.name))
    model.graph.initializer.append(numpy_helper.from_array(scale, init.name + SCALE_SUFFIX))
    return [
        helper.make_node("Cast", [init.name], [init.name + CAST_SUFFIX], to=TensorProto.FLOAT,
                         name=f"{init.name}{CAST_SUFFIX}"),
        helper.make_node("Mul", [init.name + CAST_SUFFIX, init.name + SCALE_SUFFIX], [init.name + FP32_SUFFIX],
                         name=f"{init.name}{FP32_SUFFIX}_scale"),
    ]


def store_weights(model: onnx.ModelProto, weights: WeightFormat) -> onnx.ModelProto:
    """Rewrites `model` in place to store its float32 initializers as `weights`; every name stays the same."""
    if weights not in WEIGHT_FORMATS:
        raise WeightStorageError(f"weights must be one of {WEIGHT_FORMATS}, not {weights!r}")
    if weights == "fp32":
        return model
    renamed: dict[str, str] = {}
    decoders: list[onnx.NodeProto] = []
    for index, init in _float_initializers(model):
        matrix = weights == "int8-scaled" and len(init.dims) >= 2
        decoders += _store_int8(model, index, init) if matrix else _store_half(model, index, init)
        renamed[init.name] = init.name + FP32_SUFFIX
    _feed_consumers_through(model, renamed, decoders)
    return model


def restore_fp32_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undoes `store_weights` in place: plain float32 initializers under their own names; other models pass as is.

    Exact for fp16 (every float16 is a float32); for int8-scaled it yields the values the stored graph computes.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {output: index for index, node in enumerate(graph.node) for output in node.output}
    restored: dict[str, NDArray[np.float32]] = {}
    dropped_nodes: set[int] = set()  # positions in graph.node
    dropped_initializers: set[str] = set()
    for position, node in enumerate(graph.node):
        if not node.output or not node.output[0].endswith(FP32_SUFFIX):
            continue
        source = node.output[0][: -len(FP32_SUFFIX)]
        stored = initializers.get(source)
        if stored is None:
            continue
        if node.op_type == "Cast" and list(node.input) == [source] and stored.data_type == TensorProto.FLOAT16:
            restored[source] = numpy_helper.to_array(stored).astype(np.float32)
            dropped_nodes.add(position)
        elif (node.op_type == "Mul" and list(node.input) == [source + CAST_SUFFIX, source + SCALE_SUFFIX]
              and stored.data_type == TensorProto.INT8 and source + SCALE_SUFFIX in initializers
              and source + CAST_SUFFIX in producers):
            scale = numpy_helper.to_array(initializers[source + SCALE_SUFFIX])
            restored[source] = (numpy_helper.to_array(stored).astype(np.float32) * scale).astype(np.float32)
            dropped_nodes.update({position, producers[source + CAST_SUFFIX]})
            dropped_initializers.add(source + SCALE_SUFFIX)
    if not restored:
        return model
    kept_initializers = [init for init in graph.initializer if init.name not in dropped_initializers]
    for init in kept_initializers:
        if init.name in restored:
            init.CopyFrom(numpy_helper.from_array(restored[init.name], init.name))
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    kept_nodes = [node for position, node in enumerate(graph.node) if position not in dropped_nodes]
    for node in kept_nodes:
        for slot, name in enumerate(node.input):
            if name.endswith(FP32_SUFFIX) and name[: -len(FP32_SUFFIX)] in restored:
                node.input[slot] = name[: -len(FP32_SUFFIX)]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    return model


QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the graph is explicitly quantized (QuantizeLinear/DequantizeLinear nodes, as `fervid eval --int8`
    writes for ONNX Runtime on the CPU)."""
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def dequantize_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites a QDQ-quantized graph in place as a float32 one, for runtimes that compute in float (TensorRT fp16,
    ONNX Runtime on CUDA): each DequantizeLinear of a constant becomes the float32 constant it yields (the int8
    weights times their scales: what the INT8 model computes with), and each activation QuantizeLinear ->
    DequantizeLinear pair becomes a Clip to the range it can represent. The Clip matters: the quantizer drops a
    Relu whose zero is the bottom of the next uint8 range, so that range is the Relu. Other models pass as is."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in graph.output}
    constants: list[onnx.TensorProto] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id() of a removed node -> what stands in its place
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(not name or name in initializers for name in node.input):
            constants.append(numpy_helper.from_array(_dequantized(node, initializers), node.output[0]))
            replaced[id(node)] = []
        elif node.op_type == "QuantizeLinear" and all(not name or name in initializers for name in node.input[1:]):
            readers = consumers.get(node.output[0], [])
            if not readers or any(reader.op_type != "DequantizeLinear" for reader in readers):
                continue
            low, high = _representable_range(node, initializers)
            bounds = [f"{node.output[0]}__low", f"{node.output[0]}__high"]
            constants += [numpy_helper.from_array(np.array(low, np.float32), bounds[0]),
                          numpy_helper.from_array(np.array(high, np.float32), bounds[1])]
            replaced[id(node)] = []
            for reader in readers:
                replaced[id(reader)] = [helper.make_node("Clip", [node.input[0], *bounds], [reader.output[0]],
                                                         name=f"{reader.name or reader.output[0]}__clip")]
    if not replaced:
        return model
    nodes = [kept for node in graph.node for kept in replaced.get(id(node), [node])]
    used = {name for node in nodes for name in node.input} | graph_outputs
    kept_initializers = [init for init in graph.initializer if init.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers + [constant for constant in constants if constant.name in used])
    return model


def float_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The plain float32 graph a float runtime runs for `model`, however it stores its weights (fp16, int8-scaled,
    QDQ INT8); rewritten in place."""
    return dequantize_qdq(restore_fp32_weights(model))


def _zero_point(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> NDArray[Any] | None:
    """A Quantize/DequantizeLinear's zero point; None when omitted."""
    return numpy_helper.to_array(initializers[node.input[2]]) if len(node.input) > 2 and node.input[2] else None


def _representable_range(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> tuple[float, float]:
    """The float range a QuantizeLinear can represent (per-tensor): values outside it saturate."""
    scale = float(numpy_helper.to_array(initializers[node.input[1]]).reshape(-1)[0])
    zero_point = _zero_point(node, initializers)
    if zero_point is None:
        zero_point = np.array(0, np.uint8)  # ONNX: uint8 by default
    info = np.iinfo(zero_point.dtype)
    offset = int(zero_point.reshape(-1)[0])
    return (info.min - offset) * scale, (info.max - offset) * scale


def _dequantized(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> NDArray[np.float32]:
    values = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
    stored_zero = _zero_point(node, initializers)
    zero_point = np.zeros_like(scale) if stored_zero is None else stored_zero.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:  # per-channel along `axis` (default 1)
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 1) % values.ndim
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return np.asarray((values - zero_point) * scale, dtype=np.float32)
