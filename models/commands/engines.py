"""`fervid engines`: build, list and clear the TensorRT engines cached on disk (models/engine_cache.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fervid.errors import NOT_FOUND, FervidError
from fervid.files import sha256_file
from fervid.settings import Settings, get_settings
from models.engine_cache import DEFAULT_OPT_BATCH, TENSORRT_PRECISIONS, BatchProfile, EngineCache
from models.spec import DEFAULT_MODEL_PATH


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="build (or load) the engine for a model on this GPU")
    build.add_argument("--model", type=Path, default=None, help="ONNX classifier (default: FERVID_MODEL_PATH or "
                                                                "the shipped model)")
    build.add_argument("--precision", choices=TENSORRT_PRECISIONS, default=None,
                       help="default: FERVID_TENSORRT_PRECISION (fp16)")
    # Defaults match the profile workers ask for, so an engine built ahead is the one they load.
    build.add_argument("--min-batch", type=int, default=1)
    build.add_argument("--opt-batch", type=int, default=None, help="default: min(32, max batch)")
    build.add_argument("--max-batch", type=int, default=None, help="default: FERVID_CLASSIFY_BATCH")
    actions.add_parser("list", help="the cached engines and what each is valid for")
    clear = actions.add_parser("clear", help="remove cached engines")
    clear.add_argument("--model", type=Path, default=None, help="only this model's engines")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    cache = EngineCache(settings.engine_cache_dir)
    if args.action == "build":
        return _build(args, settings, cache)
    if args.action == "list":
        return _list(cache)
    if args.model and not args.model.is_file():
        raise FervidError(f"model {args.model} not found", code=NOT_FOUND)
    removed = cache.clear(sha256_file(args.model) if args.model else None)
    print(f"removed {removed} engine(s) from {cache.directory}")
    return 0


def _build(args: argparse.Namespace, settings: Settings, cache: EngineCache) -> int:
    # Imported here: `engines list/clear` must work where TensorRT cannot be imported.
    from models.backends.base import BackendUnavailable
    from models.backends.tensorrt import cached_engine, probe

    found = probe("tensorrt")
    if not found.available:
        raise BackendUnavailable(f"cannot build TensorRT engines here: {found.detail}")
    model_path = args.model or settings.model_path or DEFAULT_MODEL_PATH
    max_batch = args.max_batch or max(settings.classify_batch, 1)
    profile = BatchProfile(args.min_batch, args.opt_batch or min(DEFAULT_OPT_BATCH, max_batch), max_batch)
    precision = args.precision or settings.tensorrt_precision
    _, key = cached_engine(model_path, precision, profile, cache)
    print(cache.manifest_path(key).read_text())
    return 0


def _list(cache: EngineCache) -> int:
    manifests = cache.manifests()
    if not manifests:
        print(f"no engines in {cache.directory}")
        return 0
    print(f"{'engine':<72} {'precision':<9} {'batch':<10} {'tensorrt':<9} {'sm':<5} {'MiB':>7}  gpu, built")
    for manifest in manifests:
        print(f"{manifest.engine_file:<72} {manifest.precision:<9} {manifest.batch_profile.label():<10} "
              f"{manifest.tensorrt_version:<9} {manifest.compute_capability:<5} "
              f"{manifest.engine_bytes / 2**20:>7.1f}  {manifest.gpu_name}, {manifest.built_at} "
              f"in {manifest.build_seconds:.0f} s")
    return 0
