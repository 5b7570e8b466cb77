"""Training speed of each candidate stem on this machine: images/s of a full step (forward, backward, SGD update)
at its input size, in fp32 and bf16 autocast, channels_last on and off.

    .venv/bin/python bench/train_speed.py [--batch-size 64] [--steps 3] [--warmup 1] [--threads 2] [--device cuda]

Random faces (speed does not depend on the pictures). bf16 rows are measured only where bf16 can be fast (a CUDA
GPU, or a CPU with AVX512-BF16 / AMX-BF16; elsewhere `fervid train` never picks it) unless --all-precisions. The
last column is each row's speed against the imagenet stem's fp32 channels_last row, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fervid.labels import EMOTIONS  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.training.loss import weighted_cross_entropy  # noqa: E402
from models.training.network import EmotionResNet50  # noqa: E402
from models.training.optimizer import build_optimizer  # noqa: E402
from models.training.recipe import STEM_RECIPES, TrainConfig  # noqa: E402

BASELINE = ("imagenet", "fp32", True)


def images_per_second(stem: str, size: int, bf16: bool, channels_last: bool, batch_size: int, steps: int,
                      warmup: int, device: torch.device) -> float:
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = EmotionResNet50(num_classes=len(EMOTIONS), stem=stem).to(device=device, memory_format=memory_format)
    network.train()
    optimizer = build_optimizer(network, TrainConfig(out_dir=Path("."), data=Path(".")))
    batch = torch.randn(batch_size, 1, size, size, device=device).contiguous(memory_format=memory_format)
    targets = torch.full((batch_size, len(EMOTIONS)), 1.0 / len(EMOTIONS), device=device)
    weight = torch.ones(len(EMOTIONS), device=device)
    seconds = 0.0
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = network(batch)
        loss = weighted_cross_entropy(logits.float(), targets, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            seconds += time.perf_counter() - started
    return batch_size * steps / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row, after --warmup untimed ones")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stems", default="imagenet,small,small-pool",
                        help="comma list; imagenet's fp32 channels_last row is the baseline")
    parser.add_argument("--all-precisions", action="store_true", help="bf16 rows even where it is emulated")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = read_cpu_features()
    print(f"CPU: {cpu.describe()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    precisions = ["fp32"]
    if args.all_precisions or device.type == "cuda" or cpu.has_fast_bf16:
        precisions.append("bf16")
    rows: dict[tuple[str, str, bool], float] = {}
    print(f"{'stem':<11} {'px':>3} {'precision':<9} {'channels_last':<13} {'images/s':>9} {'vs base':>8}")
    for stem in [name.strip() for name in args.stems.split(",") if name.strip()]:
        size = STEM_RECIPES[stem].input_size
        for precision in precisions:
            for channels_last in (True, False):
                speed = images_per_second(stem, size, precision == "bf16", channels_last, args.batch_size,
                                          args.steps, args.warmup, device)
                rows[(stem, precision, channels_last)] = speed
                base = rows.get(BASELINE)
                ratio = f"{speed / base:.2f}x" if base else "-"
                print(f"{stem:<11} {size:>3} {precision:<9} {'on' if channels_last else 'off':<13} {speed:>9.1f} "
                      f"{ratio:>8}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
