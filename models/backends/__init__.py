"""The backend registry: which inference backend runs the classifier here, and why.

`auto` tries TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU (which always works). A backend module is
imported only when that backend is probed, and `tensorrt` / `torch` only inside the module that needs them.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from fervid.errors import UNKNOWN_BACKEND, FervidError
from models.backends.base import BackendOptions, BackendProbe, BackendUnavailable, InferenceBackend

log = logging.getLogger(__name__)

# name -> module defining `probe(name) -> BackendProbe` and `create(name, model_path, max_batch, options)`.
# Adding a backend means adding its file and one line here.
BACKEND_MODULES: dict[str, str] = {
    "tensorrt": "models.backends.tensorrt",
    "ort-cuda": "models.backends.ort",
    "ort-cpu": "models.backends.ort",
    "torch-cuda": "models.backends.torch_cuda",  # verification only; `auto` never picks it
}
AUTO_ORDER = ("tensorrt", "ort-cuda", "ort-cpu")
PREFERENCES = ("auto", *BACKEND_MODULES)


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


_logged_choices: set[BackendChoice] = set()


def probe_backend(name: str) -> BackendProbe:
    """Whether `name` can run here, and why, without loading a model."""
    check_preference(name)
    return importlib.import_module(BACKEND_MODULES[name]).probe(name)  # type: ignore[no-any-return]


def resolve_backend(model_path: Path, preference: str = "auto", max_batch: int = 256, *,
                    options: BackendOptions) -> tuple[InferenceBackend, BackendChoice]:
    """The backend for `preference` and the reason it was chosen; an explicit choice that cannot run raises."""
    check_preference(preference)
    if preference != "auto":
        try:
            backend = _create(preference, model_path, max_batch, options)
        except BackendUnavailable as unavailable:
            raise BackendUnavailable(f"backend {preference!r} was asked for (FERVID_BACKEND) but cannot run here: "
                                     f"{unavailable.message}. Unset FERVID_BACKEND to fall back automatically, or "
                                     "run `fervid doctor` to see what can run") from unavailable
        return backend, BackendChoice(preference, f"asked for (FERVID_BACKEND={preference})")
    skipped: list[str] = []
    for name in AUTO_ORDER:
        try:
            backend = _create(name, model_path, max_batch, options)
        except BackendUnavailable as unavailable:
            skipped.append(f"{name}: {unavailable.message}")
            continue
        reason = "; ".join([*skipped, f"using {name}"]) if skipped else f"{name} is auto's first choice"
        return backend, BackendChoice(name, reason)
    # Unreachable while ort-cpu is in AUTO_ORDER; kept so a broken install says why instead of returning None.
    raise BackendUnavailable(f"no inference backend can run here: {'; '.join(skipped)}")


def select_backend(model_path: Path, preference: str = "auto", max_batch: int = 256, *,
                   options: BackendOptions) -> InferenceBackend:
    """The backend for `preference` (callers pass settings.backend); the choice is logged once per process."""
    backend, choice = resolve_backend(model_path, preference, max_batch, options=options)
    if choice not in _logged_choices:
        _logged_choices.add(choice)
        log.info("inference backend %s: %s", choice.name, choice.reason)
    return backend


def check_preference(preference: str) -> None:
    if preference not in PREFERENCES:
        raise FervidError(f"unknown inference backend {preference!r}; FERVID_BACKEND must be one of "
                          f"{', '.join(PREFERENCES)}", code=UNKNOWN_BACKEND)


def _create(name: str, model_path: Path, max_batch: int, options: BackendOptions) -> InferenceBackend:
    module = importlib.import_module(BACKEND_MODULES[name])
    found: BackendProbe = module.probe(name)
    if not found.available:
        raise BackendUnavailable(found.detail)
    return module.create(name, model_path, max_batch, options)  # type: ignore[no-any-return]


__all__ = ["BackendChoice", "BackendOptions", "BackendProbe", "BackendUnavailable", "InferenceBackend", "probe_backend",
           "resolve_backend", "select_backend"]
