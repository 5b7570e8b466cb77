"""`fervid analyze` on bad arguments: exit 2 with a one-line reason, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.media_factory import write_still
from fervid.cli import main


@pytest.mark.parametrize("fps", ["nan", "inf", "0", "-1"])
def test_a_sampling_rate_that_is_not_a_positive_number_exits_2(
    fps: str, tmp_path: Path, tiny_model_path: Path, fervid_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a real image and a working model
    fervid_env.setenv("FERVID_MODEL_PATH", str(tiny_model_path))
    still = write_still(tmp_path / "photo.png")
    # when analysed at a sampling rate float() accepts but no clock can tick at
    code = main(["analyze", str(still), "--fps", fps, "--no-progress"])
    # then the command refuses it with one line naming --fps
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("fervid analyze: invalid_request: --fps") and "\n" not in err


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fervid.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_analyze_prints_the_timeline_and_exits_0_then_2_with_one_line_on_bad_input(
    tmp_path: Path, tiny_model_path: Path, shared_dir: Path, yunet_path: Path
) -> None:
    # given the embedded defaults pointed at a scratch database, a tiny model and YuNet
    env = {"FERVID_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}", "FERVID_MODEL_PATH": str(tiny_model_path),
           "FERVID_DETECTOR_PATH": str(yunet_path)}
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(bytes(range(256)) * 400)
    # when a real clip and then a non-video are analysed
    good = run_cli(["analyze", str(shared_dir / "media" / "single_face.mp4"), "--fps", "5"], env)
    bad = run_cli(["analyze", str(noise)], env)
    csv_out = tmp_path / "timeline.csv"
    as_csv = run_cli(["analyze", str(shared_dir / "media" / "single_face.mp4"), "--format", "csv",
                      "--out", str(csv_out), "--no-progress"], env)
    # then the clip's JSON has every sampled frame with its face, and the non-video gets one line and exit 2
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["job"]["status"] == "succeeded" and len(report["timeline"]) == 12
    assert all(len(item["faces"]) == 1 for item in report["timeline"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["fervid analyze: unsupported_media: the file is not a video or image "
                                               "format that can be read"]
    assert as_csv.returncode == 0 and len(csv_out.read_text().splitlines()) == 13  # header + 12 faces


def test_analyze_runs_the_shipped_int8_model_from_an_empty_model_cache(
    tmp_path: Path, shared_dir: Path, yunet_path: Path
) -> None:
    # given the shipped model (INT8, kept in INT8 by the check of its weights at load) and a model cache never used
    env = {"FERVID_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}", "FERVID_DETECTOR_PATH": str(yunet_path),
           "FERVID_MODEL_CACHE_DIR": str(tmp_path / "model-cache")}
    env_without_model = {key: value for key, value in os.environ.items() if key != "FERVID_MODEL_PATH"}
    # when a clip is analysed: ONNX Runtime's thread pools are alive when the decoders' fork server starts and forks
    clip = shared_dir / "media" / "single_face.mp4"
    result = subprocess.run([sys.executable, "-m", "fervid.cli", "analyze", str(clip), "--fps", "5", "--no-progress"],
                            capture_output=True, text=True, timeout=300, env={**env_without_model, **env})
    # then every sampled frame has its face, from the INT8 model itself
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["timeline"]) == 12 and all(len(item["faces"]) == 1 for item in report["timeline"])
    assert report["job"]["model"]["precision"] == "int8", report["job"]["model"]


def test_the_summary_says_when_the_faces_found_were_too_blurred_to_trust(
    tmp_path: Path, yunet_path: Path, shared_dir: Path, fervid_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given the one-face photo blurred (a Gaussian of 6 px: YuNet still finds the face), analysed in process
    import cv2

    from fervid.settings import get_settings
    from worker.analyze_command import analyze_file, print_summary

    fervid_env.setenv("FERVID_DATABASE_URL", f"sqlite:///{tmp_path / 'embedded.db'}")
    fervid_env.setenv("FERVID_DETECTOR_PATH", str(yunet_path))
    get_settings.cache_clear()
    blurred = tmp_path / "blurred.png"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(cv2.imread(str(shared_dir / "media" / "single_face.jpg")), (0, 0), 6))
    job_id = analyze_file(blurred, 5.0, get_settings())
    # when its summary is printed
    print_summary(job_id, sys.stdout)
    # then it does not claim there were no faces: it says the one found was left out, and why
    out = capsys.readouterr().out
    assert "no faces found" not in out and "1 face found, none reliable enough to summarise" in out
