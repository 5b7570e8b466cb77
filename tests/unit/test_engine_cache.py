"""The engine cache on a real disk with real processes; engines here are opaque bytes (no TensorRT needed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import time
from datetime import datetime
from pathlib import Path

import pytest

from fervid.errors import FervidError
from models.backends.cuda_memory import DeviceInfo
from models.engine_cache import BatchProfile, EngineCache, EngineKey, EngineManifest

DEVICE = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0", "12.4")
KEY = EngineKey("ab" * 32, "10.3.0", "9.0", "fp16", BatchProfile(1, 32, 256))


def counting_build(log: Path, engine: bytes = b"serialized engine", pause_s: float = 0.0):  # type: ignore[no-untyped-def]
    def build() -> bytes:
        with log.open("a") as stream:
            stream.write("built\n")
        time.sleep(pause_s)  # widens the window in which a second builder would collide
        return engine

    return build


def builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_every_key_component_changes_the_key() -> None:
    # given one change per component
    variants = [
        dataclasses.replace(KEY, model_sha256="cd" * 32),
        dataclasses.replace(KEY, tensorrt_version="10.4.0"),
        dataclasses.replace(KEY, compute_capability="8.9"),
        dataclasses.replace(KEY, precision="fp32"),
        dataclasses.replace(KEY, profile=BatchProfile(2, 32, 256)),
        dataclasses.replace(KEY, profile=BatchProfile(1, 64, 256)),
        dataclasses.replace(KEY, profile=BatchProfile(1, 32, 128)),
    ]

    # when
    stems = {key.stem() for key in [KEY, *variants]}

    # then each names its own file
    assert len(stems) == len(variants) + 1


def test_the_manifest_says_what_the_engine_is_valid_for(tmp_path: Path) -> None:
    # given
    cache = EngineCache(tmp_path)
    model = tmp_path / "model.onnx"

    # when
    engine = cache.get_or_build(KEY, DEVICE, counting_build(tmp_path / "log"), model)

    # then
    manifest = json.loads(cache.manifest_path(KEY).read_text())
    assert engine == b"serialized engine" == cache.engine_path(KEY).read_bytes()
    assert manifest["engine_file"] == cache.engine_path(KEY).name
    assert manifest["engine_sha256"] == hashlib.sha256(engine).hexdigest()
    assert manifest["model_sha256"] == KEY.model_sha256 and manifest["model_path"] == str(model)
    assert (manifest["tensorrt_version"], manifest["cuda_version"]) == ("10.3.0", "12.4")
    assert (manifest["compute_capability"], manifest["gpu_name"]) == ("9.0", "NVIDIA H100 80GB HBM3")
    assert manifest["precision"] == "fp16"
    assert manifest["batch_profile"] == {"min": 1, "opt": 32, "max": 256}
    assert datetime.fromisoformat(manifest["built_at"]).tzinfo is not None
    assert manifest["build_seconds"] >= 0
    assert EngineManifest.from_json(cache.manifest_path(KEY).read_text()).key() == KEY


def test_a_cached_engine_is_reused_and_a_tampered_one_rebuilt(tmp_path: Path) -> None:
    # given a cached engine
    cache, log = EngineCache(tmp_path), tmp_path / "log"
    cache.get_or_build(KEY, DEVICE, counting_build(log))

    # when it is asked for again, then its bytes are damaged and it is asked for once more
    cache.get_or_build(KEY, DEVICE, counting_build(log))
    cache.engine_path(KEY).write_bytes(b"torn write")
    engine = cache.get_or_build(KEY, DEVICE, counting_build(log))

    # then one build for the reuse, one for the damage
    assert builds(log) == 2
    assert engine == b"serialized engine"


def test_an_engine_without_its_manifest_is_not_trusted(tmp_path: Path) -> None:
    # given an engine file whose manifest was never written (a builder died between the two)
    cache = EngineCache(tmp_path)
    cache.get_or_build(KEY, DEVICE, counting_build(tmp_path / "log"))
    cache.manifest_path(KEY).unlink()

    # when / then
    assert cache.load(KEY) is None


def build_in_process(directory: str, log: str, result: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()  # both processes reach the cache together, as workers starting at once do
    engine = EngineCache(Path(directory)).get_or_build(KEY, DEVICE, counting_build(Path(log), pause_s=1.0))
    Path(result).write_bytes(engine)


def test_concurrent_builders_build_once_and_both_get_the_engine(tmp_path: Path) -> None:
    # given two worker processes starting on the same key at the same moment
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    log = tmp_path / "log"
    workers = [context.Process(target=build_in_process,
                               args=(str(tmp_path / "engines"), str(log), str(tmp_path / f"result{i}"), barrier))
               for i in range(2)]

    # when
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    # then exactly one built; the other waited on the lock and loaded that engine
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert builds(log) == 1
    assert (tmp_path / "result0").read_bytes() == (tmp_path / "result1").read_bytes() == b"serialized engine"


def test_engines_list_and_clear(fervid_env: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    # given two cached engines of two models in the configured cache
    from fervid.cli import main
    from fervid.files import sha256_file
    from fervid.settings import get_settings

    cache = EngineCache(get_settings().engine_cache_dir)
    tiny_key = dataclasses.replace(KEY, model_sha256=sha256_file(tiny_model_path))
    for key in (KEY, tiny_key):
        cache.get_or_build(key, DEVICE, counting_build(tmp_path / "log"))

    # when
    listed = main(["engines", "list"])
    listing = capsys.readouterr().out
    cleared_one = main(["engines", "clear", "--model", str(tiny_model_path)])
    left = sorted(path.name for path in cache.directory.iterdir())
    cleared_rest = main(["engines", "clear"])

    # then
    assert listed == cleared_one == cleared_rest == 0
    assert KEY.stem() in listing and tiny_key.stem() in listing and "NVIDIA H100" in listing
    assert left == sorted([cache.engine_path(KEY).name, cache.manifest_path(KEY).name, f"{KEY.stem()}.lock"])
    assert list(cache.directory.iterdir()) == []
    assert "removed 1 engine(s)" in capsys.readouterr().out


def test_engines_build_without_tensorrt_says_why(fervid_env: pytest.MonkeyPatch, tiny_model_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # given TensorRT not importable (None in sys.modules makes `import tensorrt` fail even where it is installed)
    import sys

    from fervid.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)

    # when
    code = main(["engines", "build", "--model", str(tiny_model_path)])

    # then
    assert code == 2
    assert "backend_unavailable: cannot build TensorRT engines here: cannot import tensorrt" in capsys.readouterr().err


def test_a_batch_profile_out_of_order_is_refused() -> None:
    # given / when / then
    with pytest.raises(FervidError, match="min <= opt <= max"):
        BatchProfile(1, 300, 256)
