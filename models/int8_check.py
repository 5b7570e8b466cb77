"""Does the INT8 classifier compute, on this CPU, what its own float graph computes?

ONNX Runtime fuses a QDQ graph into integer kernels chosen by the CPU. On x86 without VNNI they add pairs of u8 x s8
products in int16 and saturate when weights use all 8 bits: the file then gives other emotions on that CPU than on
the one it was checked on. Shipped files use 7-bit weights, which cannot saturate (`int8_weight_peak`), but a
model quantized elsewhere might; so each worker compares the fused graph with its float equivalent once per
(model, CPU, onnxruntime) on a fixed set of faces, and runs the float graph where they disagree.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.cpu_features import read_cpu_features
from models.network_io import Framing, crop_face, preprocess_faces, softmax
from models.spec import read_model_spec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

AGREEMENT_FLOOR = 0.99  # top-1 agreement below this on the check faces: the integer kernels are not trusted
# Faces whose float top-1 leads its runner-up by less than this are near-ties that rounding alone may flip
# (measured: every disagreement of a sound INT8 file lay under 0.03); saturation moves far more than that.
DECIDED_MARGIN = 0.05
CHECK_FACES = 256
CHECK_SEED = 48
CHECK_SIZE = 48  # FER-2013's own size: what the classifier resizes every crop through
# Where the face is in matplotlib's grace_hopper.jpg (x, y, w, h): the Haar cascade's box, fixed here so that the
# check faces never depend on a detector (tests/unit/test_int8_check.py holds it against the cascade).
PORTRAIT_FACE = (155, 105, 222, 222)
# The largest |int8 weight| whose u8 x s8 pair sums stay inside int16: 2 x 255 x 64 = 32,640 <= 32,767.
NON_SATURATING_WEIGHT_PEAK = 64


@dataclass(frozen=True)
class Int8Check:
    model_sha256: str
    cpu: str
    onnxruntime: str
    faces: int  # check faces the float graph decides (top-1 leads by DECIDED_MARGIN or more)
    agreement: float  # share of those whose top-1 emotion is the same fused and as float
    weight_peak: int  # the largest |int8 weight| in the graph

    @property
    def trusted(self) -> bool:
        return self.agreement >= AGREEMENT_FLOOR

    def describe(self) -> str:
        bits = "7-bit weights, cannot saturate" if self.weight_peak <= NON_SATURATING_WEIGHT_PEAK else \
            "8-bit weights, may saturate on CPUs without VNNI"
        verdict = "INT8 kept" if self.trusted else f"under {AGREEMENT_FLOOR:.0%}: runs the float graph instead"
        return (f"INT8 vs float top-1 agreement {self.agreement:.1%} on {self.faces} check faces ({bits}); "
                f"{verdict}")


def int8_weight_peak(model: onnx.ModelProto) -> int:
    """The largest magnitude among the graph's int8 weight initializers (0 when it has none)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    peak = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        values = numpy_helper.to_array(initializers[node.input[0]])
        if values.dtype == np.int8 and values.size:
            peak = max(peak, int(np.abs(values.astype(np.int16)).max()))
    return peak


def portrait_image() -> NDArray[np.uint8]:
    """The public-domain portrait of Grace Hopper that matplotlib ships (BGR)."""
    from matplotlib import cbook

    return np.asarray(cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), dtype=np.uint8)


@cache
def check_faces(count: int = CHECK_FACES) -> NDArray[np.uint8]:
    """`count` (48, 48) grey faces, the same on every machine: the portrait's face framed, turned, lit and occluded
    many ways so that the classifier's answers spread over several emotions, with one crop in four taken from
    elsewhere in the picture."""
    grey = np.asarray(cv2.cvtColor(portrait_image(), cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    height, width = grey.shape
    x, y, w, h = PORTRAIT_FACE
    rng = np.random.default_rng(CHECK_SEED)
    faces = np.empty((count, CHECK_SIZE, CHECK_SIZE), dtype=np.uint8)
    for index in range(count):
        if index % 4 == 3:
            side = int(rng.integers(40, min(height, width) // 2))
            box = (int(rng.integers(0, width - side)), int(rng.integers(0, height - side)), side, side)
        else:
            side = int(max(w, h) * rng.uniform(0.75, 1.5))
            cx, cy = x + w / 2 + rng.uniform(-0.15, 0.15) * side, y + h / 2 + rng.uniform(-0.15, 0.15) * side
            box = (int(cx - side / 2), int(cy - side / 2), side, side)
        crop = crop_face(grey, box, Framing(side=1.0))
        turn = cv2.getRotationMatrix2D((crop.shape[1] / 2, crop.shape[0] / 2), rng.uniform(-25, 25), 1.0)
        turned = cv2.warpAffine(crop, turn, (crop.shape[1], crop.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        image = cv2.resize(turned, (CHECK_SIZE, CHECK_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = 255.0 * (image / 255.0) ** rng.uniform(0.6, 1.6)  # gamma
        image = (image - 128.0) * rng.uniform(0.6, 1.3) + 128.0 + rng.uniform(-25, 25)  # contrast, brightness
        image += rng.normal(0.0, rng.uniform(0.0, 10.0), image.shape)
        if rng.random() < 0.3:
            top, left = rng.integers(0, CHECK_SIZE - 12, 2)
            image[top : top + rng.integers(8, 24), left : left + rng.integers(8, 24)] = rng.uniform(0, 255)
        faces[index] = np.clip(image, 0, 255).astype(np.uint8)
    return faces


def _outputs(session: ort.InferenceSession, batch: NDArray[np.float32]) -> NDArray[np.float32]:
    (out,) = session.run(None, {session.get_inputs()[0].name: batch})
    return np.asarray(out, dtype=np.float32)


def decided_agreement(fused: NDArray[np.float32], as_float: NDArray[np.float32],
                      output: str = "probs") -> tuple[float, int]:
    """Top-1 agreement over the faces the float outputs decide, and how many those are; `output` is the model's
    (probs or logits: the margin is read from probabilities)."""
    probs = softmax(as_float) if output == "logits" else as_float
    ranked = np.sort(probs, axis=1)
    decided = ranked[:, -1] - ranked[:, -2] >= DECIDED_MARGIN
    if not decided.any():
        return 1.0, 0
    same = fused.argmax(axis=1) == as_float.argmax(axis=1)
    return float(same[decided].mean()), int(decided.sum())


def run_int8_check(model_path: Path, threads: int = 0, faces: int = CHECK_FACES) -> Int8Check:
    """Runs the fused graph and its float equivalent on the first `faces` check faces, here."""
    # onnx takes a second to import: only a check that is not remembered pays for it (`cached_int8_check`).
    import onnx

    from models.graph_rewrites import float_graph

    spec = read_model_spec(model_path)
    model = onnx.load(str(model_path))
    peak = int8_weight_peak(model)  # before float_graph, which rewrites the graph in place
    batch = preprocess_faces(list(check_faces()[:faces]), spec.preprocess)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    fused = ort.InferenceSession(str(model_path), options, providers=providers)
    as_float = ort.InferenceSession(float_graph(model).SerializeToString(), options, providers=providers)
    agreement, decided = decided_agreement(_outputs(fused, batch), _outputs(as_float, batch), spec.output)
    return Int8Check(model_sha256=spec.sha256, cpu=read_cpu_features().describe(), onnxruntime=ort.__version__,
                     faces=decided, agreement=agreement, weight_peak=peak)


def cached_int8_check(model_path: Path, cache_dir: Path, threads: int = 0) -> Int8Check:
    """`run_int8_check`, remembered in `cache_dir` per model, CPU and onnxruntime version (a worker restart on the
    same machine does not pay for it again)."""
    from fervid.files import sha256_file

    key = hashlib.sha256(f"{sha256_file(model_path)}|{read_cpu_features().describe()}|{ort.__version__}".encode())
    record = cache_dir / f"int8-check-{key.hexdigest()[:16]}.json"
    try:
        return Int8Check(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    result = run_int8_check(model_path, threads)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(result)))
        partial.replace(record)
    except OSError as error:  # a read-only cache costs a check per start, nothing else
        log.debug("could not cache the INT8 check in %s: %s", cache_dir, error)
    return result

