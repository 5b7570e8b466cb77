"""The INT8 check on x86 CPUs this machine is not, emulated by QEMU's user mode (`qemu-x86_64 -cpu MODEL`).

    .venv/bin/python bench/int8_emulated.py [--model PATH ...] [--cpu Haswell] [--faces 64] [--fer2013 0]

ONNX Runtime picks its integer kernels from what CPUID answers, and QEMU answers as the CPU model it is told to be:
`-cpu Haswell` has AVX2 but neither AVX-512 nor VNNI, the CPUs whose u8 x s8 kernels add pairs of products in int16
and saturate. So this runs, on any x86 machine, the worker's own check (`models.int8_check.run_int8_check`: the
fused graph against its float graph on the packaged check faces) as such a CPU computes it, and with --fer2013 N
the fused graph's top-1 on the first N PrivateTest faces against the graph as written (QDQ in float). Numerics
only: emulated time says nothing of speed. Needs `apt-get install qemu-user`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.spec import DEFAULT_MODEL_PATH  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402


def measure(model: Path, faces: int, fer2013: int, data: Path) -> dict[str, object]:
    """What the CPU this process runs on computes (called under QEMU)."""
    import numpy as np
    import onnxruntime as ort

    from models import int8_check
    from models.graph_rewrites import float_graph
    from models.network_io import preprocess_faces
    from models.spec import read_model_spec
    from models.training.fer2013 import load_split

    started = time.perf_counter()
    check = int8_check.run_int8_check(model, threads=1, faces=faces)
    result: dict[str, object] = {"check": check.describe()}
    if fer2013:
        import onnx

        split = load_split(data, "private")
        batch = preprocess_faces(list(split.faces[:fer2013]), read_model_spec(model).preprocess)
        labels = split.labels[:fer2013]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        fused = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        written = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        as_float = ort.InferenceSession(float_graph(onnx.load(str(model))).SerializeToString(),
                                        providers=["CPUExecutionProvider"])
        top1 = {name: np.concatenate([session.run(None, {session.get_inputs()[0].name: batch[i : i + 64]})[0]
                                      for i in range(0, len(batch), 64)]).argmax(1)
                for name, session in (("fused", fused), ("as_written", written), ("float", as_float))}
        result["fer2013"] = {"faces": len(labels), **{f"{name}_top1": float((top.astype(int) == labels).mean())
                                                      for name, top in top1.items()},
                             "fused_vs_as_written_agreement": float((top1["fused"] == top1["as_written"]).mean())}
    result["emulated_s"] = round(time.perf_counter() - started)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="repeatable; default the shipped file")
    parser.add_argument("--cpu", default="Haswell", help="a QEMU x86 CPU model (qemu-x86_64 -cpu help)")
    parser.add_argument("--faces", type=int, default=64, help="check faces (the worker checks 256)")
    parser.add_argument("--fer2013", type=int, default=0, help="PrivateTest faces to score too (needs ../shared)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.model or [DEFAULT_MODEL_PATH]
    if args.child:
        print(json.dumps(measure(models[0], args.faces, args.fer2013, args.data)))
        return 0
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("bench/int8_emulated.py: qemu-x86_64 not found (apt-get install qemu-user); skipped")
        return 0
    if args.fer2013 and not args.data.is_file():
        print(f"bench/int8_emulated.py: {args.data} not found (needs ../shared); --fer2013 skipped")
        args.fer2013 = 0
    print(f"emulated CPU: QEMU {args.cpu} (qemu-x86_64 -cpu {args.cpu}); onnxruntime picks its kernels for it")
    for model in models:
        command = [qemu, "-cpu", args.cpu, sys.executable, __file__, "--child", "--model", str(model),
                   "--faces", str(args.faces), "--fer2013", str(args.fer2013), "--data", str(args.data)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{model}: failed under QEMU (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        print(f"{model}: {done.stdout.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
