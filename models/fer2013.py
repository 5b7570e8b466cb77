"""FER-2013 as shipped in one .npz: train / public (PublicTest) / private (PrivateTest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fervid.labels import EMOTIONS

SPLITS = ("train", "public", "private")
DEFAULT_DATA_PATH = Path("../shared/data/fer2013.npz")


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
