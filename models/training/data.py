"""The faces a run reads: FER-2013 train (on the training device, with each face's target distribution) and
PublicTest, where the run picks its best epoch. PrivateTest is never read here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fervid.errors import INVALID_REQUEST, FervidError
from fervid.labels import EMOTIONS
from models.training.fer2013 import NO_MAJORITY, Split, load_crowd_majority, load_ferplus_shares, load_split
from models.training.loss import class_weights, training_targets
from models.training.recipe import TrainConfig


@dataclass(frozen=True)
class PublicTest:
    split: Split
    majority: NDArray[np.int64] | None  # each face's FER+ crowd majority (or NO_MAJORITY); None: no votes given


@dataclass(frozen=True)
class TrainingSet:
    """The training faces on the device as uint8 (27 MB for FER-2013; batches are augmented there), with each face's
    label and target distribution, and the loss's class weights."""

    faces: Tensor  # (N, 1, 48, 48) uint8
    labels: Tensor  # (N,) int64
    targets: Tensor  # (N, classes) float32
    class_weight: Tensor  # (classes,) float32

    def __len__(self) -> int:
        return len(self.labels)


def load_train_split(config: TrainConfig) -> Split:
    split = load_split(config.data, "train")
    return split.head(config.limit_train) if config.limit_train else split


def load_public_test(config: TrainConfig) -> PublicTest:
    split = load_split(config.data, "public")
    majority = load_crowd_majority(config.ferplus, "public") \
        if config.ferplus is not None and config.ferplus.is_file() else None
    if config.limit_eval:
        split = split.head(config.limit_eval)
    if majority is not None:
        majority = majority[: len(split)]
        if not (majority != NO_MAJORITY).any():
            raise FervidError(f"no PublicTest face has a FER+ crowd majority in {config.ferplus}",
                              code=INVALID_REQUEST)
    return PublicTest(split, majority)


def load_training_set(config: TrainConfig, split: Split, device: torch.device) -> TrainingSet:
    ferplus_shares = load_ferplus_shares(config.ferplus, "train")[: len(split)] \
        if config.ferplus_weight > 0 and config.ferplus is not None else None
    targets = training_targets(split.labels, ferplus_shares, config.ferplus_weight, config.label_smoothing,
                               len(EMOTIONS))
    weight = class_weights(split.labels, len(EMOTIONS)) if config.class_weighted else torch.ones(len(EMOTIONS))
    return TrainingSet(faces=torch.from_numpy(split.faces).unsqueeze(1).to(device),
                       labels=torch.from_numpy(split.labels).to(device), targets=targets.to(device),
                       class_weight=weight.to(device))
