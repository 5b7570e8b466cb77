"""The shipped INT8 file on a CPU the tests may not run on: an AVX2 CPU without AVX-512 or VNNI, emulated.

ONNX Runtime picks its integer kernels from what CPUID answers, and QEMU's user mode answers as the CPU model it
is told to be (`-cpu Haswell`: AVX2, FMA, no AVX-512, no VNNI). There the u8 x s8 kernels add pairs of products in
int16 and saturate on 8-bit weights: the file shipped before 7-bit weights agreed with its float graph on 96.7 % of
30 check faces under this emulation (`bench/int8_emulated.py --model <that file> --faces 32`), under the worker's
99 % floor. A CI machine with VNNI never computes that way; this test does, on any x86 machine with qemu-user
(skipped on such a CPU itself, where tests/unit/test_int8_check.py runs the same check natively).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.cpu_features import read_cpu_features
from models.int8_check import AGREEMENT_FLOOR, NON_SATURATING_WEIGHT_PEAK
from models.spec import DEFAULT_MODEL_PATH

ROOT = Path(__file__).resolve().parents[2]
EMULATED_CPU = "Haswell"
FACES = 24  # emulation runs ResNet50 some 50x slower: about a minute here
CHECK = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from models.int8_check import run_int8_check
print(json.dumps(asdict(run_int8_check(Path(sys.argv[1]), threads=1, faces=int(sys.argv[2])))))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="QEMU's x86 user mode emulates x86 CPUs on x86 here")
@pytest.mark.skipif(read_cpu_features().features == ("AVX2",), reason="this CPU is one the emulation stands for (AVX2, "
                    "no AVX-512, no VNNI): tests/unit/test_int8_check.py runs the check natively on it, on all faces")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed (apt-get install "
                    "qemu-user; .ci/run does)")
def test_the_shipped_int8_file_agrees_with_its_float_graph_on_an_avx2_cpu_without_vnni() -> None:
    # given the shipped file and a process that runs as an AVX2 CPU without VNNI
    command = ["qemu-x86_64", "-cpu", EMULATED_CPU, sys.executable, "-c", CHECK, str(DEFAULT_MODEL_PATH), str(FACES)]
    # when the worker's INT8 check runs there
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    check = json.loads(done.stdout.strip().splitlines()[-1])
    # then the fused integer kernels give the float graph's emotion on every decided face, as the format promises
    assert check["weight_peak"] <= NON_SATURATING_WEIGHT_PEAK
    assert check["faces"] >= FACES // 2
    assert check["agreement"] >= AGREEMENT_FLOOR, check
