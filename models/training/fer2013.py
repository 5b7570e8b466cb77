"""FER-2013 as shipped in one .npz: train / public (PublicTest) / private (PrivateTest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fervid.labels import EMOTIONS

SPLITS = ("train", "public", "private")
# The FER+ re-annotation's name for each FER-2013 emotion; its contempt, unknown and not-a-face votes have none.
FERPLUS_NAMES = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness",
                 "surprise": "surprise", "neutral": "neutral"}


@dataclass(frozen=True)
class Split:
    name: str
    faces: NDArray[np.uint8]  # (N, 48, 48) grey
    labels: NDArray[np.int64]  # (N,) indices into EMOTIONS

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> Split:
        return Split(self.name, self.faces[:count], self.labels[:count])


def load_split(path: Path, name: str) -> Split:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    with np.load(path) as data:
        faces = data[f"x_{name}"].astype(np.uint8)
        labels = data[f"y_{name}"].astype(np.int64)
    if faces.ndim != 3 or labels.min() < 0 or labels.max() >= len(EMOTIONS):
        raise ValueError(f"{path}: split {name!r} is not (N, H, W) faces with labels 0..{len(EMOTIONS) - 1}")
    return Split(name, faces, labels)


def load_ferplus_shares(path: Path, name: str) -> NDArray[np.float32]:
    """Per face of a split, the share of the FER+ annotators' votes that went to each emotion (EMOTIONS order).

    A row is all zeros where no annotator chose one of the 7 emotions (contempt, unknown or not a face only) or
    where the FER+ row could not be matched to the face.
    """
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    with np.load(path) as meta:
        columns = [str(column) for column in meta["ferplus_columns"]]
        votes = meta[f"ferplus_votes_{name}"].astype(np.float32)
        aligned = meta[f"ferplus_aligned_{name}"].astype(bool)
    votes = votes[:, [columns.index(FERPLUS_NAMES[emotion]) for emotion in EMOTIONS]]
    totals = votes.sum(axis=1, keepdims=True)
    shares = np.divide(votes, totals, out=np.zeros_like(votes), where=totals > 0)
    shares[~aligned] = 0.0
    return shares


# No crowd majority for the face: its FER+ row is unmatched, or no emotion has more than half of its votes.
NO_MAJORITY = -1


def load_crowd_majority(path: Path, name: str) -> NDArray[np.int64]:
    """Per face of a split, the emotion (an EMOTIONS index) that more than half of its FER+ annotators chose, counting
    every vote they cast (contempt, unknown and not-a-face included), else NO_MAJORITY: the clear faces' crowd truth."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    with np.load(path) as meta:
        columns = [str(column) for column in meta["ferplus_columns"]]
        votes = meta[f"ferplus_votes_{name}"].astype(np.int64)
        aligned = meta[f"ferplus_aligned_{name}"].astype(bool)
    emotion_votes = votes[:, [columns.index(FERPLUS_NAMES[emotion]) for emotion in EMOTIONS]]
    clear = aligned & (2 * emotion_votes.max(axis=1) > votes.sum(axis=1))
    return np.where(clear, emotion_votes.argmax(axis=1), NO_MAJORITY).astype(np.int64)
