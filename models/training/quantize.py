"""Static INT8 quantization of the emotion classifier with ONNX Runtime (QDQ, per-channel weights): `fervid quantize`.

Two targets: `cpu` (uint8 activations, 7-bit int8 weights) and `tensorrt` (symmetric int8 activations and weights,
zero points 0: the only Q/DQ TensorRT takes). Calibration uses FER-2013 `train` faces only, preprocessed by the
runtime's own `preprocess_faces`.

Why 7-bit weights on the CPU: x86 CPUs without VNNI (most AVX2 machines) multiply u8 activations by s8 weights and
add each pair of products in saturating int16. 255 x 127 x 2 overflows it and the file answers differently there
than where it was checked; |w| <= 64 keeps every pair inside int16 (`models.int8_check`), at the cost of a bit of
weight resolution. ARM and VNNI CPUs sum in int32 either way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from numpy.typing import NDArray
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fervid.errors import INVALID_REQUEST, FervidError
from models.graph_rewrites import float_graph
from models.network_io import preprocess_faces
from models.spec import MEMBERS_KEY, NAME_KEY, PER_MEMBER_KEYS, VERSION_KEY, WEIGHTS_KEY, Preprocess

INT8_SUFFIX = "-int8"
CALIBRATION_KEY = "fervid.calibration"
CALIBRATION_BATCH = 32
CALIBRATION_SEED = 2013
DEFAULT_CALIBRATION_SIZE = 512

Target = Literal["cpu", "tensorrt"]
TARGETS: tuple[Target, ...] = ("cpu", "tensorrt")


class FaceCalibrationReader(CalibrationDataReader):
    """Feeds (N, 48, 48) grey faces to the calibrator in batches, preprocessed exactly as at run time."""

    def __init__(self, faces: NDArray[np.uint8], preprocess: Preprocess, input_name: str,
                 batch_size: int = CALIBRATION_BATCH) -> None:
        self.faces = faces
        self.preprocess = preprocess
        self.input_name = input_name
        self.batch_size = batch_size
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[dict[str, NDArray[np.float32]]]:
        for start in range(0, len(self.faces), self.batch_size):
            crops = list(self.faces[start : start + self.batch_size])
            yield {self.input_name: preprocess_faces(crops, self.preprocess)}

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def member_graph(model: onnx.ModelProto, member: int) -> onnx.ModelProto:
    """Network `member` (1-based) of an ensemble export alone: the graph up to its probabilities, with the
    ensemble's per-member metadata narrowed to it."""
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    members = int(metadata.get(MEMBERS_KEY, "1"))
    if not 1 <= member <= members:
        raise FervidError(f"--member {member}: the model has {members} member network(s)", code=INVALID_REQUEST)
    prefix = f"/members.{member - 1}/"  # the ensemble's ModuleList, as torch.onnx names its nodes
    (softmax, *_) = [node for node in model.graph.node if node.op_type == "Softmax" and node.name.startswith(prefix)]
    output = model.graph.output[0]
    # The extractor needs the shapes of the tensors it cuts at, which an export need not store.
    extracted = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(
        [model.graph.input[0].name], [softmax.output[0]])
    extracted.graph.node.append(onnx.helper.make_node("Identity", [softmax.output[0]], [output.name]))
    del extracted.graph.output[:]
    extracted.graph.output.append(output)
    for key in PER_MEMBER_KEYS:
        if key in metadata:
            metadata[key] = metadata[key].split(",")[member - 1]
    metadata[MEMBERS_KEY] = "1"
    del extracted.metadata_props[:]
    for key, value in metadata.items():
        extracted.metadata_props.add(key=key, value=value)
    del extracted.opset_import[:]
    extracted.opset_import.extend(model.opset_import)
    return extracted


def _after_softmax(graph: onnx.GraphProto) -> list[str]:
    """The Softmax nodes and every node they feed: probabilities keep full precision (8 bits would round them to
    steps of 1/255, and an ensemble's average too)."""
    tainted = {out for node in graph.node if node.op_type == "Softmax" for out in node.output}
    names = []
    for node in graph.node:  # topological order: a node's inputs come before it
        if node.op_type == "Softmax" or tainted & set(node.input):
            tainted.update(node.output)
            names.append(node.name)
    return names


def quantize_int8(model: Path, out: Path, calibration_faces: NDArray[np.uint8], preprocess: Preprocess,
                  target: Target = "cpu", member: int | None = None) -> Path:
    """Writes a QDQ INT8 copy of `model` (or of its network `member`) for `target` to `out`, carrying its fervid.*
    metadata (name suffixed "-int8"). `model` may be stored any way `fervid export` or this function writes.

    `calibration_faces` must come from the training split: calibrating on PublicTest or PrivateTest would leak them.
    """
    if calibration_faces.ndim != 3 or len(calibration_faces) == 0:
        raise FervidError(f"calibration faces must be a non-empty (N, H, W) array, got {calibration_faces.shape}",
                          code=INVALID_REQUEST)
    source = onnx.load(str(model))
    if member is not None:
        source = member_graph(source, member)
    metadata = {prop.key: prop.value for prop in source.metadata_props}
    # The quantizer only quantizes weights it finds as initializers feeding Conv/Gemm directly; an fp16-stored
    # export feeds them through Casts (and a quantized one through DequantizeLinear): quantize its float graph.
    source = float_graph(source)
    input_name = source.graph.input[0].name
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fervid-quantize-") as work:
        fp32_path, prepared_path = Path(work) / "fp32.onnx", Path(work) / "prepared.onnx"
        onnx.save(source, fp32_path)
        # Shape inference plus ORT's basic optimisations (BatchNorm folded into Conv) before adding QDQ pairs.
        quant_pre_process(str(fp32_path), str(prepared_path))
        prepared = onnx.load(str(prepared_path))
        # Exclusion goes by node name; an unnamed node would make every other unnamed node excluded too.
        for index, node in enumerate(prepared.graph.node):
            node.name = node.name or f"{node.op_type}_{index}"
        onnx.save(prepared, prepared_path)
        kept_float = _after_softmax(prepared.graph)
        symmetric = target == "tensorrt"
        quantize_static(
            str(prepared_path), str(out),
            FaceCalibrationReader(calibration_faces, preprocess, input_name),
            # reduce_range: the CPU target's 7-bit weights (above); TensorRT sums int8 products in int32.
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=not symmetric,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=kept_float,
            # TensorRT: biases stay float (its parser takes int8 Q/DQ only, not int32 bias dequantization).
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
        )
    quantized = onnx.load(str(out))
    name = metadata.get(NAME_KEY, model.stem)
    metadata[NAME_KEY] = name if name.endswith(INT8_SUFFIX) else name + INT8_SUFFIX
    # A new version for new weights: jobs record it, and two different files must never share one.
    digest = hashlib.sha256(b"".join(init.raw_data for init in quantized.graph.initializer)).hexdigest()
    metadata[VERSION_KEY] = f"{dt.datetime.now(dt.UTC):%Y%m%d}-{digest[:8]}"
    metadata[WEIGHTS_KEY] = "int8"
    pairing = "S8S8 symmetric" if target == "tensorrt" else "U8S8 7-bit weights"
    metadata[CALIBRATION_KEY] = f"{len(calibration_faces)} train faces, MinMax, QDQ {pairing} per-channel"
    del quantized.metadata_props[:]
    for key, value in metadata.items():
        quantized.metadata_props.add(key=key, value=value)
    onnx.save(quantized, str(out))
    return out


def calibration_faces(data_path: Path, count: int) -> NDArray[np.uint8]:
    """`count` faces drawn from FER-2013 `train` (never PublicTest or PrivateTest), the same draw every time."""
    from models.training.fer2013 import load_split

    return draw_faces(load_split(data_path, "train").faces, count)


def draw_faces(faces: NDArray[np.uint8], count: int) -> NDArray[np.uint8]:
    """`count` of `faces` (training faces), in their order, the same draw every time."""
    chosen = np.random.default_rng(CALIBRATION_SEED).choice(len(faces), min(count, len(faces)), replace=False)
    return np.asarray(faces[np.sort(chosen)], dtype=np.uint8)
