"""../shared as the benchmarks find it (beside the checkout): its media, and the YuNet copy they detect with."""

from __future__ import annotations

from pathlib import Path

from fervid.settings import Settings
from models.detector_files import YUNET_FILENAME

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_YUNET = SHARED / "models" / YUNET_FILENAME


def with_shared_yunet(settings: Settings) -> Settings:
    """`settings` detecting with ../shared's YuNet when they name none (a benchmark never downloads it)."""
    if settings.detector_path is None and SHARED_YUNET.is_file():
        return settings.model_copy(update={"detector_path": SHARED_YUNET})
    return settings
