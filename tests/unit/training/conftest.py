from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fervid.labels import EMOTIONS


@pytest.fixture
def small_fer_file(tmp_path: Path) -> Path:
    """A FER-2013-shaped .npz of random faces: training mechanics need the file's layout, not its pictures."""
    rng = np.random.default_rng(7)
    arrays = {}
    for split, count in (("train", 96), ("public", 32), ("private", 32)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (count, 48, 48), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, len(EMOTIONS), count).astype(np.int64)
    path = tmp_path / "fer_small.npz"
    np.savez(path, **arrays)
    return path
