"""The shipped INT8 file on a CPU the tests may not run on: an AVX2 CPU without AVX-512 or VNNI, emulated.

ONNX Runtime picks its integer kernels from what CPUID answers, and QEMU's user mode answers as the CPU model it
is told to be (`-cpu Haswell`: AVX2, FMA, no AVX-512, no VNNI). There the u8 x s8 kernels add pairs of products in
int16 and saturate on 8-bit weights: the file shipped before 7-bit weights agreed with its float graph on 96.7 % of
30 check faces under this emulation (`bench/int8_emulated.py --model <that file> --faces 32`). A CI machine with
VNNI never computes that way; this test does, on any x86 machine with qemu-user (and natively, without QEMU, on such
a CPU itself): the evidence behind the check workers run at load, which keeps 7-bit files in INT8 on every CPU.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.int8_emulated import AGREEMENT_FLOOR, decided_agreement
from bench.portrait import PORTRAIT_FACE, check_faces, portrait_image
from models.cpu_features import read_cpu_features
from models.detectors import HaarDetector
from models.int8_check import read_int8_weights
from models.spec import DEFAULT_MODEL_PATH

ROOT = Path(__file__).resolve().parents[2]
EMULATED_CPU = "Haswell"
FACES = 24  # emulation runs ResNet50 some 50x slower: about a minute here
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


@pytest.mark.skipif(platform.machine() != "x86_64", reason="QEMU's x86 user mode emulates x86 CPUs on x86 here")
@pytest.mark.skipif(not NATIVE and shutil.which("qemu-x86_64") is None,
                    reason="qemu-x86_64 not installed (apt-get install qemu-user; .ci/run does)")
def test_the_shipped_int8_file_agrees_with_its_float_graph_on_an_avx2_cpu_without_vnni() -> None:
    # given the shipped file, which the check at load keeps in INT8 on every CPU, and a process that runs as an AVX2
    # CPU without VNNI
    assert read_int8_weights(DEFAULT_MODEL_PATH).cannot_saturate
    emulator = [] if NATIVE else ["qemu-x86_64", "-cpu", EMULATED_CPU]

    # when its fused graph and its float graph classify the check faces there
    done = subprocess.run([*emulator, sys.executable, "bench/int8_emulated.py", "--child", "--faces", str(FACES)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)

    # then the integer kernels give the float graph's emotion on every decided face, as the format promises
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["faces"] >= FACES // 2
    assert result["agreement"] >= AGREEMENT_FLOOR, result
