"""What each install carries: the API runs on the base package (no ML runtime); the images name real extras.

The images are checked here as text against pyproject.toml and docker-compose.yml, on every machine; tests/deploy
builds and runs them where a Docker engine answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT

ML_RUNTIME_MODULES = ("onnxruntime", "onnx", "cv2", "av", "pi_heif", "torch", "tensorrt")
ML_RUNTIME_DISTRIBUTIONS = {"onnxruntime", "onnxruntime-gpu", "onnx", "opencv-python-headless", "av", "pi-heif",
                            "torch", "cuda-python"}
PIP_INSTALL_EXTRAS = re.compile(r"pip install [^\n]*?'\.\[([a-z0-9,-]+)\]'")


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(line).name for line in requirements}


def test_the_api_builds_and_draws_a_plot_without_importing_an_ml_runtime(fervid_env: pytest.MonkeyPatch) -> None:
    # given a fresh interpreter (this one has imported the ML runtimes for other tests) and the path `fervid api`
    # takes: its command module, the app factory, and the plot route's renderer (matplotlib, imported lazily)
    fervid_env.setenv("FERVID_API_KEYS", "demo:packaging-test-key")
    script = ("import importlib, json, sys; importlib.import_module('api.serve'); "
              "from api.app import create_app; create_app(); "
              "from fervid.labels import EMOTIONS; from fervid.results import TrackSeries, render_plot_png; "
              "png = render_plot_png([TrackSeries(1, [0.0, 200.0], {e: [0.1, 0.2] for e in EMOTIONS})], 'job', 200.0); "
              f"print(json.dumps([png[:4].hex(), [m for m in {ML_RUNTIME_MODULES!r} if m in sys.modules]]))")

    # when
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)

    # then
    png_magic, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert png_magic == b"\x89PNG".hex()
    assert loaded == []


def test_a_workers_main_process_imports_no_ml_runtime_nor_numpy(fervid_env: pytest.MonkeyPatch) -> None:
    # given a fresh interpreter and what `fervid worker`'s main process, which forks the pool, imports: its command,
    # the tasks (registered there), and the light modules that settle its layout and fetch the detector
    script = ("import importlib, json, sys; "
              "[importlib.import_module(m) for m in ('worker.serve', 'worker.tasks', 'worker.layout', "
              "'models.detector_files')]; "
              f"print(json.dumps([m for m in {(*ML_RUNTIME_MODULES, 'numpy')!r} if m in sys.modules]))")

    # when
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)

    # then none of the libraries that start thread pools at import (NumPy's OpenBLAS, ONNX Runtime, OpenCV) is there
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_fervid_analyze_loads_its_classifier_without_the_onnx_package_or_celery(
        fervid_env: pytest.MonkeyPatch) -> None:
    # given a fresh interpreter and an empty model cache: nothing remembered from an earlier process
    script = ("import json, sys; from fervid.settings import get_settings; "
              "import worker.analyze_command; from worker.pipeline import build_analyzer; "
              "analyzer = build_analyzer(get_settings()); "
              "print(json.dumps([analyzer.classifier.backend.precision, "
              "[m for m in ('onnx', 'celery') if m in sys.modules]]))")

    # when it takes the path `fervid analyze` takes to a ready analyzer
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)

    # then the INT8 file runs in INT8 (its 7-bit weights cannot saturate on any CPU), and the imports that cost a
    # second of every start were not needed for it, nor for the check that said so
    precision, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert precision == "int8"
    assert loaded == []


def test_the_base_install_carries_no_ml_runtime_and_each_worker_extra_one_onnxruntime() -> None:
    # given
    project = _project()
    base = _names(project["dependencies"])
    extras = {name: _names(requirements) for name, requirements in project["optional-dependencies"].items()}

    # then the API's install is free of the worker's runtime
    assert base & ML_RUNTIME_DISTRIBUTIONS == set()
    # the CPU and GPU workers share one set and differ in the ONNX Runtime wheel (the two overwrite each other)
    assert "fervid[worker-core]" in project["optional-dependencies"]["worker"]
    assert "fervid[worker-core]" in project["optional-dependencies"]["gpu"]
    assert "onnxruntime" in extras["worker"] and "onnxruntime-gpu" not in extras["worker"]
    assert "onnxruntime-gpu" in extras["gpu"] and "onnxruntime" not in extras["gpu"]
    assert not extras["worker-core"] & {"onnxruntime", "onnxruntime-gpu"}


def test_every_extra_and_file_the_images_and_makefile_install_exists() -> None:
    # given every `pip install '.[...]'` line in the Dockerfiles and the Makefile
    sources = [*sorted((ROOT / "docker").glob("Dockerfile*")), ROOT / "Makefile"]
    named = {extra for source in sources for group in PIP_INSTALL_EXTRAS.findall(source.read_text())
             for extra in group.split(",")}
    constraints = re.findall(r"docker/constraints-[a-z0-9]+\.txt", (ROOT / "docker" / "Dockerfile.gpu").read_text())

    # then
    assert {"worker", "gpu", "s3", "train", "dev"} <= named
    assert named <= set(_project()["optional-dependencies"])
    assert constraints and all((ROOT / path).is_file() for path in constraints)


def test_compose_builds_only_stages_the_dockerfile_defines() -> None:
    # given
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "docker" / "Dockerfile").read_text(), re.MULTILINE))
    targets = set(re.findall(r"dockerfile: docker/Dockerfile, target: ([a-z-]+)[,}]",
                             (ROOT / "docker-compose.yml").read_text()))

    # then
    assert targets == {"api", "worker"}
    assert targets <= stages
