"""Training (`fervid train`): fine-tune (or train from scratch) the ResNet50 emotion classifier on FER-2013 train,
on the CPU or a CUDA GPU.

Model selection uses PublicTest only; PrivateTest is never read here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fervid.files import sha256_file
from models.training.checkpoint import ResumePoint, read_checkpoint, restore, save_checkpoint, write_history
from models.training.data import PublicTest, load_public_test, load_train_split, load_training_set
from models.training.distill import OnnxTeacher
from models.training.ema import WeightAverage
from models.training.epoch import EpochTotals, Learner, train_epoch
from models.training.fer2013 import Split
from models.training.initial_network import build_network
from models.training.network import EmotionResNet50
from models.training.optimizer import build_optimizer
from models.training.placement import Placement, choose_placement
from models.training.recipe import TrainConfig, check_options, describe_recipe, resolve_run
from models.training.selection import Standing, public_standing, standing_record


def train(config: TrainConfig, after_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Trains, checkpointing every epoch; returns the path of the best (PublicTest) checkpoint. `after_epoch` gets
    each epoch's record once its checkpoints are written."""
    check_options(config)
    placement = choose_placement(config)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    train_split, public = load_train_split(config), load_public_test(config)
    last_path, best_path = config.out_dir / "last.pt", config.out_dir / "best.pt"
    resumed = read_checkpoint(last_path) if config.resume and last_path.exists() else None
    config = resolve_run(config, None if resumed is None else resumed["config"])
    print(describe_recipe(config), flush=True)
    data_sha = sha256_file(config.data)
    torch.manual_seed(config.seed)
    network, start = _starting_network(config, resumed, train_split, data_sha, public, placement)
    ema = WeightAverage(network, config.ema_decay) if config.ema_decay else None
    teacher = OnnxTeacher(config.teacher, config.threads) if config.teacher else None
    optimizer = build_optimizer(network, config)
    data = load_training_set(config, train_split, placement.device)
    if len(data) // config.batch_size == 0:
        raise SystemExit(f"batch size {config.batch_size} exceeds the {len(train_split)} training faces")

    point = ResumePoint(epoch=0, step=0, best=Standing(-1.0, None, -math.inf), history=config.history)
    if start is not None:
        # best.pt starts as the network the continuation began from, so it never hands back a worse one (and
        # `--epochs 0` turns a network of an exported file into a checkpoint).
        point = replace(point, best=start)
        save_checkpoint(best_path, network, optimizer, config, -1, point.step, start, start, ema)
    if resumed is not None:
        point = restore(resumed, network, optimizer, ema)
        config.history = point.history
        print(f"resumed from {last_path} after epoch {resumed['epoch'] + 1}", flush=True)

    forward: nn.Module = torch.compile(network) if config.compile else network  # type: ignore[assignment]
    learner = Learner(network, forward, optimizer, ema, teacher, point.step)
    best, eval_seconds = point.best, 0.0
    for epoch in range(point.epoch, config.epochs):
        totals = train_epoch(config, epoch, learner, data, placement, eval_seconds)
        evaluated = time.perf_counter()
        own = public_standing(network if ema is None else ema.network, public, config, placement)
        eval_seconds = time.perf_counter() - evaluated
        record = _epoch_record(config, epoch, totals, own, learner, eval_seconds)
        config.history.append(record)
        print(json.dumps(record), flush=True)
        best = _save_epoch(config, epoch, learner, best, own, data_sha)
        if after_epoch is not None:
            after_epoch(record)
    return best_path


def _starting_network(config: TrainConfig, resumed: dict[str, Any] | None, train_split: Split, data_sha256: str,
                      public: PublicTest, placement: Placement) -> tuple[EmotionResNet50, Standing | None]:
    """The network on the run's device, and for a continuation (`--init model`) its PublicTest standing: the
    baseline the continuation has to beat."""
    if resumed is not None:
        # The checkpoint's weights replace whatever the run started from: no warm start or download again.
        network = placement.place(build_network(replace(config, init="scratch")))
        config.prior_init = resumed["config"].get("prior_init", "")
        config.prior_epochs = int(resumed["config"].get("prior_epochs", 0))
        return network, None
    network = placement.place(build_network(config, train_split.faces, data_sha256))
    if config.init != "model":
        return network, None
    start = public_standing(network, public, config, placement)
    print(json.dumps({"epoch": 0, **standing_record(start)}), flush=True)
    return network, start


def _epoch_record(config: TrainConfig, epoch: int, totals: EpochTotals, own: Standing, learner: Learner,
                  eval_seconds: float) -> dict[str, Any]:
    """The epoch's line in the run's history (and on stdout)."""
    return {
        "epoch": epoch + 1, "train_loss": round(totals.loss, 4), "train_acc": round(totals.accuracy, 4),
        **standing_record(own), "epoch_seconds": round(totals.seconds, 1),
        "images_per_second": round(totals.faces / totals.seconds, 1),
        "lr": round(learner.optimizer.param_groups[0]["lr"], 6),
        "eta_seconds": round((config.epochs - epoch - 1) * (totals.seconds + eval_seconds)),
    }


def _save_epoch(config: TrainConfig, epoch: int, learner: Learner, best: Standing, own: Standing,
                data_sha256: str) -> Standing:
    """Writes best.pt when the epoch beats the run's best, last.pt, epoch-NNN.pt with `--keep-epochs`, and
    history.json; returns the run's best standing."""
    if own.score > best.score:
        best = own
        save_checkpoint(config.out_dir / "best.pt", learner.network, learner.optimizer, config, epoch, learner.step,
                        best, best, learner.ema)
    save_checkpoint(config.out_dir / "last.pt", learner.network, learner.optimizer, config, epoch, learner.step,
                    best, own, learner.ema)
    if config.keep_epochs:
        save_checkpoint(config.out_dir / f"epoch-{epoch + 1:03d}.pt", learner.network, learner.optimizer, config,
                        epoch, learner.step, best, own, learner.ema)
    write_history(config, data_sha256, best)
    return best
