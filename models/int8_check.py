"""Could the INT8 classifier's integer kernels saturate on some CPU? Answered from the file, when it is loaded.

ONNX Runtime fuses a QDQ graph into integer kernels chosen by the CPU. On x86 without VNNI (AVX2-only machines)
they multiply u8 activations by s8 weights and add each pair of products in saturating int16: with 8-bit weights
(2 x 255 x 127 > 32,767) the file gives other emotions there than on a CPU with VNNI. Weights within |w| <= 64 keep
every pair inside int16 whatever the input, on every CPU; `fervid quantize --target cpu` writes them. A file whose
weights are wider, or that this check cannot bound, runs its float graph on the CPU instead, on every CPU, so that
a file computes the same wherever it runs (bench/int8_emulated.py shows both on an emulated AVX2 CPU).

Read off the file's protobuf framing like its metadata (models.spec): no onnx import, no session.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.spec import LENGTH_DELIMITED, VARINT, message_fields, walk_fields

# The largest |int8 weight| whose u8 x s8 pair sums stay inside int16: 2 x 255 x 64 = 32,640 <= 32,767.
NON_SATURATING_WEIGHT_PEAK = 64

# onnx.proto field numbers: ModelProto.graph; GraphProto.node, .initializer; NodeProto.input, .output, .op_type;
# TensorProto.data_type, .name, .raw_data; TensorProto.DataType INT8, INT32.
_GRAPH, _NODE, _INITIALIZER = 7, 1, 5
_INPUT, _OUTPUT, _OP_TYPE = 1, 2, 4
_DATA_TYPE, _NAME, _RAW_DATA = 2, 8, 9
_INT8, _INT32 = 3, 6
# Operators that multiply in integers themselves (the QOperator format), and the inputs of each that may be weights.
_INTEGER_OPS = {"QLinearConv": (0, 3), "QLinearMatMul": (0, 3), "QGemm": (0, 3), "ConvInteger": (0, 1),
                "MatMulInteger": (0, 1)}


@dataclass(frozen=True)
class Int8Weights:
    """What the file's quantized weights are, as far as saturation goes."""

    tensors: int  # int8 weight tensors read
    peak: int  # the largest |int8 weight| among them
    unbounded: str = ""  # why some weight could not be read ("": every one was)

    @property
    def cannot_saturate(self) -> bool:
        return not self.unbounded and self.peak <= NON_SATURATING_WEIGHT_PEAK

    def describe(self) -> str:
        if self.unbounded:
            return f"{self.unbounded}: its sums cannot be bounded; runs the float graph on the CPU"
        if self.tensors == 0:
            return "no int8 weights: nothing to saturate"
        if self.cannot_saturate:
            return (f"7-bit weights (largest |w| {self.peak} in {self.tensors} tensors): cannot saturate int16 on any "
                    "CPU; INT8 kept")
        return (f"8-bit weights (largest |w| {self.peak}): would saturate int16 on x86 CPUs without VNNI; runs the "
                "float graph on the CPU (re-quantize with `fervid quantize --target cpu` for 7-bit weights)")


def _tensor(data: mmap.mmap, start: int, end: int) -> tuple[str, int, tuple[int, int] | None]:
    """An initializer's name, data type and raw_data span (None when its values are stored another way)."""
    name, data_type, raw = "", 0, None
    for number, wire_type, a, b in walk_fields(data, start, end):
        if wire_type == VARINT and number == _DATA_TYPE:
            data_type = a
        elif wire_type == LENGTH_DELIMITED and number == _NAME:
            name = bytes(data[a:b]).decode()
        elif wire_type == LENGTH_DELIMITED and number == _RAW_DATA:
            raw = (a, b)
    return name, data_type, raw


def _node(data: mmap.mmap, start: int, end: int) -> tuple[str, list[str], list[str]]:
    """A node's op_type, inputs and outputs."""
    texts = [(field, bytes(data[a:b]).decode()) for field, a, b in message_fields(data, start, end)
             if field in (_INPUT, _OUTPUT, _OP_TYPE)]
    return (next((text for field, text in texts if field == _OP_TYPE), ""),
            [text for field, text in texts if field == _INPUT], [text for field, text in texts if field == _OUTPUT])


def read_int8_weights(path: Path) -> Int8Weights:
    """Every weight a DequantizeLinear or an integer operator multiplies with, bounded. In a QDQ graph a
    DequantizeLinear reads an int8 weight, an int32 bias or an activation a QuantizeLinear wrote; anything else (a
    weight quantized while the session loads, one in a Constant node or not stored as raw bytes, uint8 weights) is
    not bounded here, and counts as one that may saturate."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        graph = next((start, end) for number, start, end in message_fields(data, 0, len(data)) if number == _GRAPH)
        parts = message_fields(data, *graph)
        initializers = {name: (data_type, raw) for name, data_type, raw in
                        (_tensor(data, start, end) for number, start, end in parts if number == _INITIALIZER)}
        nodes = [_node(data, start, end) for number, start, end in parts if number == _NODE]
        activations = {name for op_type, _, outputs in nodes if op_type == "QuantizeLinear" for name in outputs}
        peaks: dict[str, int] = {}
        for op_type, inputs, _ in nodes:
            if op_type == "QuantizeLinear" and inputs[0] in initializers:
                return Int8Weights(len(peaks), 0, f"weight {inputs[0]} is quantized while the session loads")
            positions = (0,) if op_type == "DequantizeLinear" else _INTEGER_OPS.get(op_type, ())
            for name in [inputs[position] for position in positions if position < len(inputs)]:
                if name in initializers:
                    data_type, raw = initializers[name]
                    if data_type == _INT32 and op_type == "DequantizeLinear":
                        continue  # a bias: added in int32, never multiplied
                    if data_type != _INT8 or raw is None:
                        return Int8Weights(len(peaks), 0, f"weight {name} is not int8 stored as raw bytes")
                    values = np.frombuffer(data[raw[0] : raw[1]], np.int8).astype(np.int16)
                    peaks[name] = int(np.abs(values).max(initial=0))
                elif op_type == "DequantizeLinear" and name not in activations:
                    return Int8Weights(len(peaks), 0, f"DequantizeLinear reads {name}, neither a stored weight nor "
                                                      "a QuantizeLinear's output")
    return Int8Weights(len(peaks), max(peaks.values(), default=0))
