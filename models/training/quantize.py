"""Static INT8 quantization of the emotion classifier with ONNX Runtime (QDQ, per-channel weights): `fervid quantize`.

Two targets: `cpu` (uint8 activations, int8 weights: the pairing ONNX Runtime's x86 kernels run fastest) and
`tensorrt` (symmetric int8 activations and weights, zero points 0: the only Q/DQ TensorRT takes). Calibration
uses FER-2013 `train` faces only, preprocessed by the runtime's own `preprocess_faces`.
"""

from __future__ import annotations

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

from fervid.errors import FervidError
from models.classifier import preprocess_faces
from models.graph_rewrites import WEIGHTS_KEY, restore_fp32_weights
from models.spec import NAME_KEY, Preprocess

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


def quantize_int8(model: Path, out: Path, calibration_faces: NDArray[np.uint8], preprocess: Preprocess,
                  target: Target = "cpu") -> Path:
    """Writes a QDQ INT8 copy of `model` for `target` to `out`, carrying its fervid.* metadata (name suffixed
    "-int8").

    `calibration_faces` must come from the training split: calibrating on PublicTest or PrivateTest would leak them.
    """
    if calibration_faces.ndim != 3 or len(calibration_faces) == 0:
        raise FervidError(f"calibration faces must be a non-empty (N, H, W) array, got {calibration_faces.shape}",
                          code="invalid_request")
    source = onnx.load(str(model))
    metadata = {prop.key: prop.value for prop in source.metadata_props}
    # The quantizer only quantizes weights it finds as initializers feeding Conv/Gemm directly; an fp16-stored
    # export feeds them through Casts, so quantize its exact fp32 equivalent instead.
    source = restore_fp32_weights(source)
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
        # Probabilities keep full precision: an 8-bit softmax would round them to steps of 1/255.
        softmax_nodes = [node.name for node in prepared.graph.node if node.op_type == "Softmax"]
        symmetric = target == "tensorrt"
        quantize_static(
            str(prepared_path), str(out),
            FaceCalibrationReader(calibration_faces, preprocess, input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=softmax_nodes,
            # TensorRT: biases stay float (its parser takes int8 Q/DQ only, not int32 bias dequantization).
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
        )
    quantized = onnx.load(str(out))
    metadata[NAME_KEY] = metadata.get(NAME_KEY, model.stem) + INT8_SUFFIX
    metadata[WEIGHTS_KEY] = "int8"
    pairing = "S8S8 symmetric" if target == "tensorrt" else "U8S8"
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
