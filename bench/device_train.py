"""The chosen recipe on a GPU machine, in one command: about 100 epochs within 9 minutes of device time.

    bash bench/device_train.sh                          # on the device: data from ../shared/data or shared/data
    .venv/bin/python bench/device_train.py --device cpu --limit-train 256 --epochs 1 --parts-dir /tmp/p  # smoke

`fervid train`'s own loop and flags (any recipe option passes through), with GPU defaults: the training set goes
onto the GPU once as uint8 and is augmented there (crop, flip, erasing and mixing are torch ops on the batch's
device), bf16 autocast, channels_last, batch 256, `--compile` optional. The run folder (`--out`, full checkpoints
with optimizer state for `--resume`, ~280 MB each) stays on the machine; what comes back is `--parts-dir` (`$OUT`):
after every epoch that improves PublicTest, the candidate network alone (weights, config, epoch: what `fervid
export` and `fervid eval --checkpoint` read) split into parts of at most 16 MiB, with JOIN.txt saying how to join
them, and history.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.training.commands.train import add_arguments, config_from_args  # noqa: E402
from models.training.train import train  # noqa: E402

PART_BYTES = 16 * 1024 * 1024  # the largest file the device tool hands back comfortably
CANDIDATE = "candidate.pt"


def write_parts(checkpoint: Path, parts_dir: Path) -> list[Path]:
    """The candidate of `checkpoint` (no optimizer or raw training weights) as parts of at most PART_BYTES."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    slim = {key: payload[key] for key in ("network", "config", "epoch", "step", "best_public")}
    parts_dir.mkdir(parents=True, exist_ok=True)
    whole = parts_dir / (CANDIDATE + ".tmp")
    torch.save(slim, whole)
    data = whole.read_bytes()
    whole.unlink()
    for old in parts_dir.glob(CANDIDATE + ".part-*"):
        old.unlink()
    parts = []
    for index, start in enumerate(range(0, len(data), PART_BYTES)):
        part = parts_dir / f"{CANDIDATE}.part-{index:03d}"
        part.write_bytes(data[start : start + PART_BYTES])
        parts.append(part)
    digest = hashlib.sha256(data).hexdigest()
    join = f"cat {CANDIDATE}.part-* > {CANDIDATE} && echo '{digest}  {CANDIDATE}' | sha256sum -c\n"
    (parts_dir / "JOIN.txt").write_text(
        f"# epoch {slim['epoch'] + 1}, PublicTest {slim['best_public']:.4f}; in this folder:\n{join}")
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/device_train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(device="cuda", epochs=100, batch_size=256, out=Path("/tmp/fervid-device-run"),
                        progress_every=0)
    parser.add_argument("--parts-dir", type=Path, default=Path(os.environ.get("OUT", "runs/device-out")),
                        help="where the candidate's parts and history.json go (default $OUT)")
    args = parser.parse_args()
    config = config_from_args(args)
    parts_dir: Path = args.parts_dir
    parts_dir.mkdir(parents=True, exist_ok=True)
    if config.device.startswith("cuda") and torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}", flush=True)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    best = {"public_acc": -1.0}

    def after_epoch(record: dict[str, Any]) -> None:
        shutil.copyfile(config.out_dir / "history.json", parts_dir / "history.json")
        if record["public_acc"] > best["public_acc"]:
            best["public_acc"] = record["public_acc"]
            parts = write_parts(config.out_dir / "best.pt", parts_dir)
            print(json.dumps({"candidate_epoch": record["epoch"], "parts": len(parts)}), flush=True)

    train(config, after_epoch)
    print((parts_dir / "JOIN.txt").read_text(), end="", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
