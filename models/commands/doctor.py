"""`fervid doctor`: for each inference backend, whether it can run on this machine, which one would be used, and
why; which face detector workers would run and why (without downloading it); the CPU's features, and whether the
INT8 model's weights are narrow enough that its integer kernels cannot saturate on any CPU (the check workers run
when they load it). No engine is built. Exits 1 when the configured backend cannot run."""

from __future__ import annotations

import argparse

from fervid.errors import FervidError
from fervid.settings import get_settings
from models.backends import AUTO_ORDER, BACKEND_MODULES, check_preference, probe_backend
from models.backends.base import BackendProbe
from models.backends.ort import is_quantized
from models.cpu_features import read_cpu_features
from models.detector_files import plan_detector
from models.engine_cache import EngineCache
from models.int8_check import read_int8_weights
from models.spec import DEFAULT_MODEL_PATH


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=None,
                        help="the preference to explain (default: FERVID_BACKEND, which defaults to auto)")


def would_use(preference: str, probes: dict[str, BackendProbe]) -> str | None:
    """The backend `preference` resolves to given the probes, or None when it cannot run."""
    if preference == "auto":
        return next((name for name in AUTO_ORDER if probes[name].available), None)
    return preference if probes[preference].available else None


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    preference = args.backend or settings.backend
    check_preference(preference)  # an unknown name is refused before any output
    probes = {name: probe_backend(name) for name in BACKEND_MODULES}
    chosen = would_use(preference, probes)
    print(f"{'backend':<11} {'can run':<8} {'used':<5} why")
    for name, found in probes.items():
        print(f"{name:<11} {'yes' if found.available else 'no':<8} {'<--' if name == chosen else '':<5} {found.detail}")
    print()
    if chosen is None:
        print(f"FERVID_BACKEND={preference}: cannot run here ({probes[preference].detail}); unset it to fall back "
              "automatically")
    else:
        fallback = "" if preference != "auto" or chosen == AUTO_ORDER[0] else " (auto's earlier choices cannot run)"
        print(f"FERVID_BACKEND={preference}: the classifier would run on {chosen}{fallback}")
    cpu = read_cpu_features()
    int8_dot = "yes" if cpu.has_int8_dot else "no: u8 x s8 pairs are summed in saturating int16"
    print(f"cpu: {cpu.describe()}; 8-bit dot products into int32: {int8_dot}")
    model_path = settings.model_path or DEFAULT_MODEL_PATH
    missing = "" if model_path.is_file() else " (missing: set FERVID_MODEL_PATH or run `fervid export`)"
    print(f"model: {model_path}{missing}")
    if not missing and is_quantized(model_path):
        print(f"int8: {read_int8_weights(model_path).describe()}")
    # From files and settings only: the doctor never downloads.
    try:
        detector = plan_detector(settings.detector_path, settings.model_cache_dir, settings.detector_url).describe()
    except FervidError as error:
        detector = f"none: {error.message}"
    print(f"detector: workers would run {detector}")
    cache = EngineCache(settings.engine_cache_dir)
    engines = len(cache.manifests()) if cache.directory.is_dir() else 0
    print(f"engine cache: {cache.directory} ({engines} engine(s); `fervid engines list`)")
    return 0 if chosen else 1
