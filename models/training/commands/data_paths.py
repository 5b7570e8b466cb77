"""Where the bench's commands look for FER-2013 when not told: ../shared/data, relative to the working directory
(the repository root in this project's layout). Library functions take the path as a value."""

from __future__ import annotations

from pathlib import Path

DEFAULT_DATA_PATH = Path("../shared/data/fer2013.npz")
DEFAULT_FERPLUS_PATH = Path("../shared/data/fer2013_meta.npz")
