"""A run's checkpoints (best.pt, last.pt, epoch-NNN.pt) and its history.json: what they hold, written so that a crash
never leaves a torn one, and how `--resume` takes a run up again from last.pt exactly."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.training.ema import WeightAverage
from models.training.recipe import TrainConfig
from models.training.selection import Standing, standing_record


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run goes on from: the next epoch, the schedule's step, the best standing so far."""

    epoch: int
    step: int
    best: Standing
    history: list[dict[str, Any]]


def save_checkpoint(path: Path, network: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                    epoch: int, step: int, best: Standing, own: Standing, ema: WeightAverage | None = None) -> None:
    """`network` in the checkpoint is the candidate (what export and evaluation read): the EMA's weights when the run
    keeps one, whose raw training weights then travel beside it for `--resume`. `own` is that network's PublicTest
    standing (what export records), `best` the run's best so far (what `--resume` goes on from)."""
    payload: dict[str, Any] = {
        "network": (network if ema is None else ema.network).state_dict(), "optimizer": optimizer.state_dict(),
        "epoch": epoch, "step": step, "best_public": best.public_acc, "best_public_crowd": best.public_crowd,
        "best_score": best.score, "public_acc": own.public_acc, "public_crowd": own.public_crowd,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    if ema is not None:
        payload["training_network"] = network.state_dict()
        payload["ema_updates"] = ema.updates
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a torn checkpoint


def read_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def restore(saved: dict[str, Any], network: nn.Module, optimizer: torch.optim.Optimizer,
            ema: WeightAverage | None) -> ResumePoint:
    """Loads a checkpoint's weights, EMA and optimizer state into the run's; checkpoints from before a figure was
    recorded stand in with what they have."""
    network.load_state_dict(saved.get("training_network", saved["network"]))
    if ema is not None:
        ema.load_state_dict({"updates": saved.get("ema_updates", 0), "network": saved["network"]})
    optimizer.load_state_dict(saved["optimizer"])
    best = Standing(saved["best_public"], saved.get("best_public_crowd"),
                    saved.get("best_score", saved["best_public"]))
    return ResumePoint(saved["epoch"] + 1, saved["step"], best, saved["config"].get("history", []))


def write_history(config: TrainConfig, data_sha256: str, best: Standing) -> None:
    (config.out_dir / "history.json").write_text(json.dumps(
        {"data_sha256": data_sha256, "select": config.select, "best": standing_record(best),
         "history": config.history}, indent=1))
