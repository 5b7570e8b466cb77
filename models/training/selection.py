"""How a run ranks its epochs on PublicTest: FER-2013 top-1, or agreement with the FER+ crowd majority above a
top-1 floor (`--select`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from models.training.data import PublicTest
from models.training.fer2013 import NO_MAJORITY
from models.training.placement import Placement
from models.training.predict import predict_probs
from models.training.recipe import TrainConfig


@dataclass(frozen=True)
class Standing:
    """A network's PublicTest figures and the score its run ranks epochs by (higher is better)."""

    public_acc: float
    public_crowd: float | None  # None: no FER+ votes given
    score: float


def top1(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def crowd_agreement(probs: np.ndarray, majority: np.ndarray) -> float:
    """Top-1 against the FER+ crowd majority, on the faces that have one."""
    clear = majority != NO_MAJORITY
    return top1(probs[clear], majority[clear])


def standing(config: TrainConfig, public_acc: float, public_crowd: float | None) -> Standing:
    if config.select == "top1":
        return Standing(public_acc, public_crowd, public_acc)
    assert public_crowd is not None  # check_options refuses select "crowd" without the votes
    # An epoch under the floor ranks below every epoch above it (scores < 0), and among its kind by top-1, so a
    # run whose epochs all miss the floor still hands back its most accurate one.
    score = public_crowd if public_acc >= config.min_public_acc else public_acc - 1.0
    return Standing(public_acc, public_crowd, score)


def public_standing(network: nn.Module, public: PublicTest, config: TrainConfig, placement: Placement) -> Standing:
    """`network` scored on PublicTest as training sees it: one view a face, at the run's input size."""
    probs = predict_probs(network, public.split.faces, config.input_size, False, placement.bf16,
                          device=placement.device)
    return standing(config, top1(probs, public.split.labels),
                    None if public.majority is None else crowd_agreement(probs, public.majority))


def standing_record(figures: Standing) -> dict[str, float]:
    """A standing as a history record's fields: PublicTest top-1 and, with the FER+ votes, the crowd agreement."""
    record = {"public_acc": round(figures.public_acc, 4)}
    if figures.public_crowd is not None:
        record["public_crowd"] = round(figures.public_crowd, 4)
    return record
