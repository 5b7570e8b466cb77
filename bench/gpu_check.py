"""The GPU check, one prepared run for a lent GPU machine.

    .venv/bin/python bench/gpu_check.py [--model PATH] [--faces 2048] [--seconds 4]
    .venv/bin/python bench/gpu_check.py --cpu-smoke --model PATH    # here, on the CPU, before spending GPU time

Classifier throughput in faces/s at batch 1, 32 and 256 on the GPU path (torch-cuda fp32 and fp16, TensorRT fp16
when importable, ORT CUDA when installed), each against ONNX Runtime CPU measured in the same run; and fp16 parity
against fp32 (top-1 agreement >= 99 %, max probability difference <= 5e-3) on real FER-2013 PublicTest faces,
preprocessed the way the runtime preprocesses crops. `--cpu-smoke` runs ONNX Runtime CPU only on a few faces, with
the fp16-converted graph (what TensorRT 11 builds from) as its parity candidate. Prints a table; writes JSON to
$OUT/gpu_check.json when $OUT is set (or to --json). Exits 1 when a parity check fails.

For a model quantized for the CPU (QDQ), the GPU backends run its float equivalent, so the reference is ONNX
Runtime CPU on that float equivalent, and torch-cuda (which needs a float export's named weights) is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.backends.base import InferenceBackend, run_in_batches  # noqa: E402
from models.backends.ort import CPU_PROVIDER, OrtBackend  # noqa: E402
from models.network_io import preprocess_faces, softmax  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, ModelSpec, read_model_spec  # noqa: E402
from models.training.fer2013 import load_split  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.npz"
MIN_AGREEMENT = 0.99
MAX_PROB_DIFF = 5e-3
REFERENCE = "ort-cpu fp32"


@dataclass
class Throughput:
    backend: str
    batch: int
    faces_per_s: float
    vs_ort_cpu: float | None  # faces/s over ORT CPU's at the same batch, same run


@dataclass
class Parity:
    candidate: str
    reference: str
    faces: int
    top1_agreement: float
    max_prob_diff: float
    passed: bool


def faces_per_second(backend: InferenceBackend, faces: NDArray[np.float32], batch: int, seconds: float) -> float:
    """One pass over `faces` in batches of `batch` (stopping after `seconds`), after one warm-up batch."""
    backend.run(faces[:batch])
    done, started = 0, time.perf_counter()
    for start in range(0, len(faces) - batch + 1, batch):
        backend.run(faces[start : start + batch])
        done += batch
        if time.perf_counter() - started >= seconds:
            break
    return done / (time.perf_counter() - started)


def probabilities(backend: InferenceBackend, spec: ModelSpec, faces: NDArray[np.float32]) -> NDArray[np.float32]:
    raw = run_in_batches(backend, faces)
    return softmax(raw) if spec.output == "logits" else raw


def compare(candidate: str, reference: str, probs: dict[str, NDArray[np.float32]]) -> Parity:
    ours, theirs = probs[candidate], probs[reference][: len(probs[candidate])]
    agreement = float((ours.argmax(axis=1) == theirs.argmax(axis=1)).mean())
    diff = float(np.abs(ours - theirs).max())
    return Parity(candidate, reference, len(ours), round(agreement, 5), diff,
                  agreement >= MIN_AGREEMENT and diff <= MAX_PROB_DIFF)


def float_equivalent(model: Path, work: Path) -> Path | None:
    """The float graph the GPU backends run for a CPU-quantized (QDQ) model, written under `work`; None for a float
    model."""
    import onnx

    from models.graph_rewrites import float_graph, has_qdq

    loaded = onnx.load(str(model))
    if not has_qdq(loaded):
        return None
    path = work / "float-equivalent.onnx"
    onnx.save(float_graph(loaded), str(path))
    return path


def gpu_backends(model: Path, max_batch: int,
                 with_torch: bool) -> tuple[dict[str, Callable[[], InferenceBackend]], str]:
    """The GPU-path backends this machine has, and the device's name."""
    import torch

    from models.backends import probe_backend
    from models.backends.torch_cuda import TorchCudaBackend

    if not torch.cuda.is_available():
        raise SystemExit(f"bench/gpu_check.py: torch {torch.__version__} sees no CUDA device; run with --cpu-smoke")
    factories: dict[str, Callable[[], InferenceBackend]] = {}
    if with_torch:
        factories["torch-cuda fp32"] = lambda: TorchCudaBackend(model, max_batch, "cuda", fp16=False)
        factories["torch-cuda fp16"] = lambda: TorchCudaBackend(model, max_batch, "cuda", fp16=True)
    trt = probe_backend("tensorrt")
    print(f"tensorrt: {trt.detail}")
    if trt.available:
        from fervid.settings import get_settings
        from models.backends.tensorrt import TrtBackend
        from models.engine_cache import BatchProfile, EngineCache

        cache = EngineCache(get_settings().engine_cache_dir)
        for precision in ("fp32", "fp16"):
            factories[f"tensorrt {precision}"] = (
                lambda p=precision: TrtBackend(model, p, BatchProfile.up_to(max_batch), cache))  # type: ignore[misc]
    ort_cuda = probe_backend("ort-cuda")
    if ort_cuda.available:
        factories["ort-cuda fp32"] = lambda: OrtBackend(model, ["CUDAExecutionProvider", CPU_PROVIDER], max_batch)
    return factories, torch.cuda.get_device_name()


def parity_pairs(names: list[str]) -> list[tuple[str, str]]:
    pairs = [("torch-cuda fp16", "torch-cuda fp32"), ("torch-cuda fp32", REFERENCE), ("tensorrt fp16", "tensorrt fp32"),
             ("tensorrt fp16", REFERENCE), ("tensorrt fp32", REFERENCE), ("ort-cpu fp16-graph", REFERENCE)]
    return [(a, b) for a, b in pairs if a in names and b in names]


def print_tables(throughput: list[Throughput], parity: list[Parity]) -> None:
    print(f"\n{'backend':<20} {'batch':>5} {'faces/s':>10} {'x ort-cpu':>10}")
    for row in throughput:
        ratio = f"{row.vs_ort_cpu:.2f}" if row.vs_ort_cpu is not None else "-"
        print(f"{row.backend:<20} {row.batch:>5} {row.faces_per_s:>10.1f} {ratio:>10}")
    print(f"\n{'candidate':<20} {'reference':<16} {'faces':>6} {'top-1 agree':>12} {'max |dp|':>10}  verdict")
    for row in parity:
        print(f"{row.candidate:<20} {row.reference:<16} {row.faces:>6} {row.top1_agreement:>12.4f} "
              f"{row.max_prob_diff:>10.2e}  {'ok' if row.passed else 'FAIL'}")
    print(f"(parity needs top-1 agreement >= {MIN_AGREEMENT:.0%} and max |dp| <= {MAX_PROB_DIFF})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help=f"ONNX classifier (default {DEFAULT_MODEL_PATH})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cpu-smoke", action="store_true", help="ONNX Runtime CPU only, few faces: a dry run")
    parser.add_argument("--faces", type=int, default=None, help="PublicTest faces used (default 2048; smoke 64)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32,256; smoke 1,32)")
    parser.add_argument("--seconds", type=float, default=None, help="time cap per throughput cell (default 4; smoke 1)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default $OUT/...)")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    model = args.model or DEFAULT_MODEL_PATH
    if not model.is_file():
        print(f"bench/gpu_check.py: model {model} not found; pass --model PATH", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"bench/gpu_check.py: {args.data} not found (needs ../shared/data)", file=sys.stderr)
        return 2
    count = args.faces or (64 if smoke else 2048)
    batches = [int(b) for b in (args.batches or ("1,32" if smoke else "1,32,256")).split(",")]
    seconds = args.seconds if args.seconds is not None else (1.0 if smoke else 4.0)

    spec = read_model_spec(model)
    public = load_split(args.data, "public").head(count)
    faces = preprocess_faces(list(public.faces), spec.preprocess)
    max_batch = max(batches)
    work = Path(tempfile.mkdtemp(prefix="fervid-gpu-check-"))
    float_model = float_equivalent(model, work)
    reference_model = float_model or model
    factories: dict[str, Callable[[], InferenceBackend]] = {
        REFERENCE: lambda: OrtBackend(reference_model, [CPU_PROVIDER], max_batch)}
    if float_model is not None:
        print(f"{model} is quantized for the CPU: the reference is ONNX Runtime CPU on its float equivalent")
        factories["ort-cpu int8"] = lambda: OrtBackend(model, [CPU_PROVIDER], max_batch)
    device = f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if not smoke:
        gpu, gpu_name = gpu_backends(model, max_batch, with_torch=float_model is None)
        factories.update(gpu)
        device = f"{gpu_name}; {device}"
    print(f"device: {device}\nmodel: {model} ({spec.name} {spec.version}, sha256 {spec.sha256[:12]})\n"
          f"faces: {len(faces)} FER-2013 PublicTest, input {faces.shape[1:]}")

    throughput: list[Throughput] = []
    probs: dict[str, NDArray[np.float32]] = {}
    accuracy: dict[str, float] = {}
    for name, factory in factories.items():
        backend = factory()
        for batch in batches:
            rate = faces_per_second(backend, faces, batch, seconds)
            baseline = next((row.faces_per_s for row in throughput if row.backend == REFERENCE and row.batch == batch),
                            None)
            throughput.append(Throughput(name, batch, round(rate, 1), round(rate / baseline, 2) if baseline else None))
        probs[name] = probabilities(backend, spec, faces)
        accuracy[name] = round(float((probs[name].argmax(axis=1) == public.labels).mean()), 4)
        del backend
    # The fp16 graph TensorRT 11 builds from, run by ONNX Runtime: parity only (ORT CPU emulates fp16 slowly).
    import onnx

    from models.backends.tensorrt import convert_to_fp16

    with tempfile.TemporaryDirectory() as scratch:
        fp16_path = Path(scratch) / "fp16.onnx"
        onnx.save(convert_to_fp16(onnx.load(str(reference_model))), fp16_path)
        subset = faces[: min(len(faces), 64 if smoke else 512)]
        probs["ort-cpu fp16-graph"] = probabilities(OrtBackend(fp16_path, [CPU_PROVIDER], max_batch), spec, subset)

    parity = [compare(candidate, reference, probs) for candidate, reference in parity_pairs(list(probs))]
    print_tables(throughput, parity)
    print(f"\ntop-1 accuracy on these {len(faces)} PublicTest faces: "
          + ", ".join(f"{name} {value:.2%}" for name, value in accuracy.items()))
    ok = all(row.passed for row in parity)
    report: dict[str, Any] = {
        "mode": "cpu-smoke" if smoke else "gpu", "device": device, "model": str(model), "model_sha256": spec.sha256,
        "faces": len(faces), "batches": batches, "seconds_per_cell": seconds,
        "throughput": [asdict(row) for row in throughput], "parity": [asdict(row) for row in parity],
        "accuracy_public_subset": accuracy, "thresholds": {"min_top1_agreement": MIN_AGREEMENT,
                                                           "max_prob_diff": MAX_PROB_DIFF}, "ok": ok,
    }
    out = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
