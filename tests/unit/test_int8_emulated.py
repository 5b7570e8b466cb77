"""INT8 weights on a CPU the tests may not run on: an AVX2 CPU without AVX-512 or VNNI, emulated.

ONNX Runtime picks its integer kernels from what CPUID answers, and QEMU's user mode answers as the CPU model it
is told to be (`-cpu Haswell`: AVX2, FMA, no AVX-512, no VNNI). There the u8 x s8 kernels add pairs of products in
int16 and saturate when weights use more than 7 bits. A CI machine with VNNI never computes that way; this test
does, on any x86 machine with qemu-user (and natively, without QEMU, on such a CPU itself), on a convolution built
to saturate at the first weight past the bound: the evidence behind the check workers run at load
(models/int8_check.py), which keeps files whose weights stay within NON_SATURATING_WEIGHT_PEAK in INT8 on every CPU
and runs the others' float graph. (The whole shipped network under the same emulation: `bench/int8_emulated.py`,
minutes of CPU; the file shipped before 7-bit weights agreed with its float graph on 96.7 % of 30 check faces.)
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.int8_emulated import decided_agreement
from bench.portrait import PORTRAIT_FACE, check_faces, portrait_image
from models.cpu_features import read_cpu_features
from models.detectors import HaarDetector
from models.int8_check import NON_SATURATING_WEIGHT_PEAK, read_int8_weights
from models.spec import DEFAULT_MODEL_PATH

ROOT = Path(__file__).resolve().parents[2]
EMULATED_CPU = "Haswell"
CHANNELS = 64  # input channels of the probe: every pair of products at its largest
# This CPU is one the emulation stands for (AVX2, no AVX-512, no VNNI): the check runs natively on it.
NATIVE = read_cpu_features().features == ("AVX2",)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_the_check_faces_sit_where_the_cascade_finds_the_portraits_face() -> None:
    # when the detector that ships with OpenCV looks at the portrait
    (found, *_) = HaarDetector().detect(portrait_image())

    # then the fixed box the check faces are framed on is that face
    assert iou(found.box, PORTRAIT_FACE) > 0.8


def test_the_check_faces_are_the_same_every_time_and_varied() -> None:
    # when
    faces = check_faces.__wrapped__()

    # then
    assert faces.shape == (256, 48, 48) and faces.dtype == np.uint8
    np.testing.assert_array_equal(faces, check_faces.__wrapped__())
    assert faces.reshape(len(faces), -1).mean(axis=1).std() > 10  # lit differently, not one face 256 times


def test_near_ties_do_not_count_against_agreement() -> None:
    # given float outputs: one face decided (0.7 vs 0.2), one a near-tie (0.41 vs 0.40)
    as_float = np.array([[0.7, 0.2, 0.1], [0.41, 0.40, 0.19]], np.float32)
    fused = np.array([[0.6, 0.3, 0.1], [0.39, 0.42, 0.19]], np.float32)  # the tie flips, the decided face holds

    # then
    assert decided_agreement(fused, as_float) == (1.0, 1)
    assert decided_agreement(fused[::-1].copy(), as_float)[0] == 0.0  # a decided face that flips counts


def saturation_probe(weight: int, path: Path) -> Path:
    """A QDQ 1x1 convolution of CHANNELS uint8 inputs (scale 1/255) with every int8 weight `weight` (scale 1/weight):
    on inputs of 1.0 every pair of products is 255 x weight x 2, and the output is CHANNELS whatever the weight,
    unless the kernel's int16 pair sums saturate (past 32,767: weights over 64)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {"x_scale": np.float32(1 / 255), "x_zero": np.uint8(0),
                 "w_q": np.full((1, CHANNELS, 1, 1), weight, np.int8), "w_scale": np.float32(1 / weight),
                 "w_zero": np.int8(0), "y_scale": np.float32(CHANNELS / 255), "y_zero": np.uint8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
             helper.make_node("Conv", ["x_dq", "w"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["probs"])]
    graph = helper.make_graph(
        nodes, "saturation_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 4, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 1, 4, 4])],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# Run under the emulated CPU: each probe's output fused (the integer kernels) and as written (QDQ in float).
PROBE_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort

    outputs = {}
    for path in sys.argv[1:]:
        means = []
        for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            means.append(float(session.run(None, {"x": np.ones((1, CHANNELS, 4, 4), np.float32)})[0].mean()))
        outputs[path] = means
    print(json.dumps(outputs))
""").replace("CHANNELS", str(CHANNELS))


@pytest.mark.skipif(platform.machine() != "x86_64", reason="QEMU's x86 user mode emulates x86 CPUs on x86 here")
@pytest.mark.skipif(not NATIVE and shutil.which("qemu-x86_64") is None,
                    reason="qemu-x86_64 not installed (apt-get install qemu-user; .ci/run does)")
def test_weights_within_the_bound_never_saturate_on_an_avx2_cpu_without_vnni_and_the_first_past_it_does(
    tmp_path: Path,
) -> None:
    # given probes at the bound, one past it and at the full 8 bits, which the check at load tells apart
    weights = {NON_SATURATING_WEIGHT_PEAK: True, NON_SATURATING_WEIGHT_PEAK + 1: False, 127: False}
    probes = {weight: saturation_probe(weight, tmp_path / f"w{weight}.onnx") for weight in weights}
    assert {weight: read_int8_weights(path).cannot_saturate for weight, path in probes.items()} == weights
    assert read_int8_weights(DEFAULT_MODEL_PATH).cannot_saturate  # the shipped file is within the bound
    emulator = [] if NATIVE else ["qemu-x86_64", "-cpu", EMULATED_CPU]

    # when each runs fused and as written on a CPU that adds pairs of u8 x s8 products in int16
    done = subprocess.run([*emulator, sys.executable, "-c", PROBE_CHILD, *map(str, probes.values())],
                          capture_output=True, text=True, timeout=300)

    # then the probe within the bound computes what its float graph does, to the output's step, and those past it
    # fall short by more (the pair sums clipped at 32,767): one past it by 3 steps, 8 bits by half
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = json.loads(done.stdout.strip().splitlines()[-1])
    step = CHANNELS / 255
    for weight, path in probes.items():
        fused, as_written = outputs[str(path)]
        assert as_written == pytest.approx(CHANNELS, abs=step)
        if weights[weight]:
            assert abs(fused - as_written) < step / 2, (weight, fused)
        else:
            assert as_written - fused > 2 * step, (weight, fused)
