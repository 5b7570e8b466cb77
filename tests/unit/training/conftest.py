from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fervid.labels import EMOTIONS


def write_fer_file(path: Path, counts: tuple[int, int, int], seed: int) -> Path:
    """A FER-2013-shaped .npz of random faces (train, public, private counts): training mechanics need the file's
    layout, not its pictures."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "public", "private"), counts, strict=True):
        arrays[f"x_{split}"] = rng.integers(0, 256, (count, 48, 48), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, len(EMOTIONS), count).astype(np.int64)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def small_fer_file(tmp_path: Path) -> Path:
    return write_fer_file(tmp_path / "fer_small.npz", (96, 32, 32), seed=7)
