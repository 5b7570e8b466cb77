"""`fervid models fetch`: download the YuNet face detector into the model cache (sha256-checked)."""

from __future__ import annotations

import argparse
import sys

from fervid.errors import DOWNLOAD_FAILED, FervidError
from fervid.settings import get_settings
from models.detector_files import YUNET_FILENAME, fetch_yunet
from models.detectors import any_size_yunet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("fetch", help=f"download {YUNET_FILENAME} from FERVID_DETECTOR_URL into the model cache "
                                     "(sha256-checked)")


def print_progress(done: int, total: int | None) -> None:
    print(f"\rdownloading YuNet: {done} / {total if total is not None else '?'} bytes", end="", file=sys.stderr,
          flush=True)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.detector_url:
        raise FervidError(f"FERVID_DETECTOR_URL is empty, so nothing is downloaded; copy {YUNET_FILENAME} into "
                          f"{settings.model_cache_dir} or set FERVID_DETECTOR_PATH", code=DOWNLOAD_FAILED)
    try:
        path = fetch_yunet(settings.model_cache_dir, settings.detector_url, on_progress=print_progress)
    finally:
        print(file=sys.stderr)  # ends the progress line
    any_size_yunet(path, settings.model_cache_dir)  # what workers run, made here so that no worker start pays for it
    print(f"YuNet face detector at {path}")
    return 0
