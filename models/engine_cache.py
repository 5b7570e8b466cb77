"""TensorRT engines cached on disk, each with a JSON manifest saying what it is valid for.

An engine is only valid for the model, TensorRT version, GPU compute capability, precision and batch profile it
was built for, so all five make its key. Workers starting together build a missing engine once: the builder holds
a file lock, the others wait on it and then load the engine it wrote. Loading checks the manifest and the engine's
sha256, so a torn or foreign file is rebuilt rather than handed to TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import filelock

from fervid.errors import ENGINE_BUILD_TIMEOUT, INVALID_BATCH_PROFILE, FervidError

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
# What an engine can be built for; FERVID_TENSORRT_PRECISION picks one (fervid/settings.py spells the same three).
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPT_BATCH = 32  # what TensorRT tunes kernels for: a typical gathered batch of faces
LOCK_TIMEOUT_S = 3600.0  # a ResNet50 build takes minutes; an hour means the builder is stuck, not slow


class BuildDevice(Protocol):
    """What a manifest records of the GPU an engine was built on (models.backends.cuda_memory.DeviceInfo)."""

    @property
    def name(self) -> str: ...

    @property
    def cuda_version(self) -> str: ...


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile on the input's batch axis: TensorRT tunes for `opt` and accepts min..max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise FervidError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}",
                              code=INVALID_BATCH_PROFILE)

    @classmethod
    def up_to(cls, max_batch: int) -> BatchProfile:
        return cls(1, min(DEFAULT_OPT_BATCH, max_batch), max_batch)

    def label(self) -> str:
        return f"{self.min}/{self.opt}/{self.max}"


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    tensorrt_version: str
    compute_capability: str  # "9.0"
    precision: str  # one of TENSORRT_PRECISIONS
    profile: BatchProfile

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def stem(self) -> str:
        """A file name people can read, ending in the digest of every key component."""
        return (f"{self.model_sha256[:12]}-{self.precision}-b{self.profile.min}-{self.profile.opt}-{self.profile.max}"
                f"-trt{self.tensorrt_version}-sm{self.compute_capability.replace('.', '')}-{self.digest()[:16]}")


@dataclass(frozen=True)
class EngineManifest:
    """What an engine file is valid for and how it was made; written beside it as <stem>.json."""

    engine_file: str
    engine_sha256: str
    engine_bytes: int
    model_sha256: str
    model_path: str
    tensorrt_version: str
    cuda_version: str
    compute_capability: str
    gpu_name: str
    precision: str
    batch_profile: BatchProfile
    built_at: str  # ISO 8601, UTC
    build_seconds: float
    format: int = MANIFEST_FORMAT

    def key(self) -> EngineKey:
        return EngineKey(self.model_sha256, self.tensorrt_version, self.compute_capability, self.precision,
                         self.batch_profile)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineManifest:
        raw: dict[str, Any] = json.loads(text)
        raw["batch_profile"] = BatchProfile(**raw["batch_profile"])
        return cls(**raw)


class EngineCache:
    def __init__(self, directory: Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.directory = directory
        self.lock_timeout_s = lock_timeout_s

    def engine_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.stem()}.engine"

    def manifest_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.stem()}.json"

    def load(self, key: EngineKey) -> bytes | None:
        """The cached engine for `key` if its manifest matches the key and its bytes match the manifest."""
        engine_path, manifest_path = self.engine_path(key), self.manifest_path(key)
        if not manifest_path.is_file() or not engine_path.is_file():
            return None
        try:
            manifest = EngineManifest.from_json(manifest_path.read_text())
        except (ValueError, TypeError, KeyError) as error:
            log.warning("engine manifest %s is unreadable (%s); rebuilding", manifest_path, error)
            return None
        engine = engine_path.read_bytes()
        if manifest.key() != key or manifest.engine_sha256 != hashlib.sha256(engine).hexdigest():
            log.warning("engine %s does not match its manifest; rebuilding", engine_path)
            return None
        return engine

    def get_or_build(self, key: EngineKey, device: BuildDevice, build: Callable[[], bytes],
                     model_path: Path | None = None) -> bytes:
        """The engine for `key`, built by `build()` only if no valid one is cached, once across processes."""
        cached = self.load(key)
        if cached is not None:
            return cached
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_path = self.directory / f"{key.stem()}.lock"
        try:
            with filelock.FileLock(lock_path, timeout=self.lock_timeout_s):
                # Another process may have built it while this one waited for the lock.
                cached = self.load(key)
                if cached is not None:
                    log.info("loaded engine %s built by another process", self.engine_path(key).name)
                    return cached
                log.info("building TensorRT engine %s (minutes, once per key)", self.engine_path(key).name)
                started = time.perf_counter()
                engine = build()
                seconds = time.perf_counter() - started
                manifest = EngineManifest(
                    engine_file=self.engine_path(key).name, engine_sha256=hashlib.sha256(engine).hexdigest(),
                    engine_bytes=len(engine), model_sha256=key.model_sha256,
                    model_path=str(model_path) if model_path else "", tensorrt_version=key.tensorrt_version,
                    cuda_version=device.cuda_version, compute_capability=key.compute_capability,
                    gpu_name=device.name, precision=key.precision, batch_profile=key.profile,
                    built_at=datetime.now(UTC).isoformat(timespec="seconds"), build_seconds=round(seconds, 3),
                )
                # The engine first, the manifest last: a reader never sees a manifest without its engine.
                _write_atomically(self.engine_path(key), engine)
                _write_atomically(self.manifest_path(key), manifest.to_json().encode())
                log.info("built engine %s in %.1f s", manifest.engine_file, seconds)
                return engine
        except filelock.Timeout as timeout:
            raise FervidError(f"waited {self.lock_timeout_s:.0f} s for another process building {lock_path.name}; "
                              "if no worker is building it, run `fervid engines clear`",
                              code=ENGINE_BUILD_TIMEOUT) from timeout

    def manifests(self) -> list[EngineManifest]:
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                found.append(EngineManifest.from_json(path.read_text()))
            except (ValueError, TypeError, KeyError) as error:
                log.warning("skipping unreadable engine manifest %s (%s)", path, error)
        return found

    def clear(self, model_sha256: str | None = None) -> int:
        """Removes cached engines (only those of one model when given); returns how many engines went."""
        removed = 0
        for engine_path in sorted(self.directory.glob("*.engine")):
            if model_sha256 and not engine_path.name.startswith(model_sha256[:12]):
                continue
            for path in (engine_path.with_suffix(".json"), engine_path.with_suffix(".lock")):
                path.unlink(missing_ok=True)
            engine_path.unlink()
            removed += 1
        return removed


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)

