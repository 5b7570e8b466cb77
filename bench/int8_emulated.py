"""INT8 files on x86 CPUs this machine is not, emulated by QEMU's user mode (`qemu-x86_64 -cpu MODEL`).

    .venv/bin/python bench/int8_emulated.py [--model PATH ...] [--cpu Haswell|native] [--faces 64] [--fer2013 0]

ONNX Runtime picks its integer kernels from what CPUID answers, and QEMU answers as the CPU model it is told to be:
`-cpu Haswell` has AVX2 but neither AVX-512 nor VNNI, the CPUs whose u8 x s8 kernels add pairs of products in int16
and saturate on 8-bit weights. So this runs, on any x86 machine, each file's fused graph against its float graph
on the portrait's check faces (bench/portrait.py) as such a CPU computes it, and with --fer2013 N the fused graph's
top-1 on the first N PrivateTest faces against the graph as written (QDQ in float). Beside it, the format check
workers run at load (models/int8_check.py), read from the file: the evidence that the two agree. Numerics only:
emulated time says nothing of speed. Needs `apt-get install qemu-user`; `--cpu native` runs the same here, without
QEMU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.cpu_features import read_cpu_features  # noqa: E402
from models.int8_check import read_int8_weights  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402

AGREEMENT_FLOOR = 0.99  # top-1 agreement on decided check faces below this: the integer kernels miscompute
# Faces whose float top-1 leads its runner-up by less than this are near-ties that rounding alone may flip
# (measured: every disagreement of a sound INT8 file lay under 0.03); saturation moves far more than that.
DECIDED_MARGIN = 0.05


def decided_agreement(fused: NDArray[np.float32], as_float: NDArray[np.float32],
                      output: str = "probs") -> tuple[float, int]:
    """Top-1 agreement over the faces the float outputs decide, and how many those are; `output` is the model's
    (probs or logits: the margin is read from probabilities)."""
    from models.network_io import softmax

    probs = softmax(as_float) if output == "logits" else as_float
    ranked = np.sort(probs, axis=1)
    decided = ranked[:, -1] - ranked[:, -2] >= DECIDED_MARGIN
    if not decided.any():
        return 1.0, 0
    same = fused.argmax(axis=1) == as_float.argmax(axis=1)
    return float(same[decided].mean()), int(decided.sum())


def measure(model: Path, faces: int, fer2013: int, data: Path) -> dict[str, object]:
    """What the CPU this process runs on computes (called under QEMU)."""
    import onnx
    import onnxruntime as ort

    from bench.portrait import check_faces
    from models.graph_rewrites import float_graph
    from models.network_io import preprocess_faces
    from models.spec import read_model_spec

    started = time.perf_counter()
    spec = read_model_spec(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    fused = ort.InferenceSession(str(model), options, providers=providers)
    as_float = ort.InferenceSession(float_graph(onnx.load(str(model))).SerializeToString(), options,
                                    providers=providers)

    def outputs(session: ort.InferenceSession, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.concatenate([session.run(None, {session.get_inputs()[0].name: batch[i : i + 64]})[0]
                               for i in range(0, len(batch), 64)]).astype(np.float32)

    batch = preprocess_faces(list(check_faces()[:faces]), spec.preprocess)
    agreement, decided = decided_agreement(outputs(fused, batch), outputs(as_float, batch), spec.output)
    result: dict[str, object] = {"faces": decided, "agreement": agreement}
    if fer2013:
        from models.training.fer2013 import load_split

        split = load_split(data, "private")
        batch = preprocess_faces(list(split.faces[:fer2013]), spec.preprocess)
        labels = split.labels[:fer2013]
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        written = ort.InferenceSession(str(model), options, providers=providers)
        top1 = {name: outputs(session, batch).argmax(1)
                for name, session in (("fused", fused), ("as_written", written), ("float", as_float))}
        result["fer2013"] = {"faces": len(labels), **{f"{name}_top1": float((top.astype(int) == labels).mean())
                                                      for name, top in top1.items()},
                             "fused_vs_as_written_agreement": float((top1["fused"] == top1["as_written"]).mean())}
    result["seconds"] = round(time.perf_counter() - started)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="repeatable; default the shipped file")
    parser.add_argument("--cpu", default="Haswell", help="a QEMU x86 CPU model (qemu-x86_64 -cpu help), or native: "
                        "this machine's CPU, without QEMU")
    parser.add_argument("--faces", type=int, default=64, help="check faces (of bench/portrait.py's 256)")
    parser.add_argument("--fer2013", type=int, default=0, help="PrivateTest faces to score too (needs ../shared)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.model or [DEFAULT_MODEL_PATH]
    if args.child:
        print(json.dumps(measure(models[0], args.faces, args.fer2013, args.data)))
        return 0
    qemu = shutil.which("qemu-x86_64")
    if qemu is None and args.cpu != "native":
        print("bench/int8_emulated.py: qemu-x86_64 not found (apt-get install qemu-user); skipped")
        return 0
    if args.fer2013 and not args.data.is_file():
        print(f"bench/int8_emulated.py: {args.data} not found (needs ../shared); --fer2013 skipped")
        args.fer2013 = 0
    if args.cpu == "native":
        print(f"CPU: this machine's, {read_cpu_features().describe()}")
    else:
        print(f"emulated CPU: QEMU {args.cpu} (qemu-x86_64 -cpu {args.cpu}); onnxruntime picks its kernels for it")
    emulator = [] if args.cpu == "native" else [str(qemu), "-cpu", args.cpu]
    for model in models:
        command = [*emulator, sys.executable, __file__, "--child", "--model", str(model),
                   "--faces", str(args.faces), "--fer2013", str(args.fer2013), "--data", str(args.data)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{model}: failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        verdict = "agrees" if result["agreement"] >= AGREEMENT_FLOOR else f"under the {AGREEMENT_FLOOR:.0%} floor"
        print(f"{model}: fused vs float top-1 agreement {result['agreement']:.1%} on {result['faces']} decided check "
              f"faces ({verdict}); format check at load: {read_int8_weights(model).describe()}; {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
