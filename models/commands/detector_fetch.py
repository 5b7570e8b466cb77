"""`fervid models fetch`: download the YuNet face detector into the model cache (sha256-checked)."""

from __future__ import annotations

import argparse

from fervid.settings import get_settings
from models.detectors import YUNET_FILENAME, fetch_yunet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("fetch", help=f"download {YUNET_FILENAME} into the model cache (sha256-checked)")


def run(args: argparse.Namespace) -> int:
    path = fetch_yunet(get_settings().model_cache_dir)
    print(f"YuNet face detector at {path}")
    return 0
