"""`fervid analyze` on bad arguments: exit 2 with a one-line reason, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from fervid.cli import main
from tests.media_factory import write_still


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
