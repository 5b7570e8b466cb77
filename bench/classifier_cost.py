"""What a face costs the classifier: faces/s and ms per face of each model, as the worker runs it (ONNX Runtime on
the CPU, the file's own test-time flip), all in one run so the ratios hold on a noisy machine.

    .venv/bin/python bench/classifier_cost.py --model models/fervid-emotion.onnx --model runs/other.onnx [--batch 64]
        [--with-float]

Each model is timed on the same preprocessed batch, rounds interleaved (A B A B ...), median of --rounds. Prints
the CPU, each model's passes per face (members x views), precision and figures, and the ratio to the first model.
--with-float also times each INT8 file as its float graph, what a worker runs where the INT8 check fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fervid.settings import get_settings  # noqa: E402
from models.backends.base import BackendOptions  # noqa: E402
from models.backends.ort import OrtBackend, create, is_quantized  # noqa: E402
from models.classifier import EmotionClassifier  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from worker.layout import usable_cores, with_thread_share  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime threads (default: the classifier's share, as `fervid analyze` takes it)")
    parser.add_argument("--with-float", action="store_true", help="each INT8 file also as its float graph")
    args = parser.parse_args()
    settings = with_thread_share(get_settings(), usable_cores())
    if args.threads is not None:
        settings = settings.model_copy(update={"inference_threads": args.threads})
    options = BackendOptions.from_settings(settings)
    paths: list[Path] = args.model or [DEFAULT_MODEL_PATH]
    crops = list(np.random.default_rng(0).integers(0, 256, (args.batch, 48, 48), dtype=np.uint8))
    classifiers = [EmotionClassifier(read_model_spec(path), create("ort-cpu", path, args.batch, options))
                   for path in paths]
    if args.with_float:
        floats = [path for path in paths if is_quantized(path)]
        classifiers += [EmotionClassifier(read_model_spec(path), OrtBackend(path, max_batch=args.batch,
                                                                            threads=options.threads, as_float=True))
                        for path in floats]
        paths = paths + floats
    for classifier in classifiers:
        classifier.classify(crops)  # warm-up: the first run allocates
    times: list[list[float]] = [[] for _ in classifiers]
    for _ in range(args.rounds):
        for index, classifier in enumerate(classifiers):
            started = time.perf_counter()
            classifier.classify(crops)
            times[index].append(time.perf_counter() - started)
    print(f"CPU: {read_cpu_features().describe()}, {os.cpu_count()} logical cores; batch {args.batch}, "
          f"{options.threads or 'all'} thread(s), "
          f"median of {args.rounds}")
    base = statistics.median(times[0])
    for path, classifier, taken in zip(paths, classifiers, times, strict=True):
        spec, median = classifier.spec, statistics.median(taken)
        passes = spec.members * (2 if spec.tta == "hflip" else 1)
        print(f"{path}: {passes} pass(es)/face ({spec.members} member(s), tta {spec.tta or 'none'}), "
              f"{classifier.backend.precision}: {args.batch / median:.0f} faces/s, {1000 * median / args.batch:.2f} "
              f"ms/face (min {1000 * min(taken) / args.batch:.2f}, max {1000 * max(taken) / args.batch:.2f}); "
              f"x{base / median:.2f} the first's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
