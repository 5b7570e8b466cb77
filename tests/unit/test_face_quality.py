"""Face quality: sharpness and head pose as jobs measure them, and which faces are reliable."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from fervid import quality
from fervid.quality import face_quality
from models.detectors import YuNetDetector
from models.face_quality import head_pose, sharpness


def test_sharpness_falls_with_blur_and_does_not_depend_on_the_faces_size(shared_dir: Path) -> None:
    # given a real face at two sizes, and the same face blurred
    image = cv2.imread(str(shared_dir / "media" / "single_face.jpg"))
    x, y, w, h = YuNetDetector(shared_dir / "models" / "face_detection_yunet_2023mar.onnx").detect(image)[0].box
    face = image[y : y + h, x : x + w]
    small = cv2.resize(face, (96, 96), interpolation=cv2.INTER_AREA)
    # then the measure is about the same at both sizes, and far lower once blurred
    assert sharpness(small) == pytest.approx(sharpness(face), rel=0.25)
    assert sharpness(cv2.GaussianBlur(face, (0, 0), 6)) < sharpness(face) / 4


def landmarks(yaw_offset: float = 0.0, roll_deg: float = 0.0) -> tuple[float, ...]:
    """Eyes 40 px apart, nose 30 px below their midpoint (shifted along the eye line by `yaw_offset` px), mouth
    below, all turned by `roll_deg` about the midpoint."""
    points = [(-20.0, 0.0), (20.0, 0.0), (yaw_offset, 30.0), (-15.0, 50.0), (15.0, 50.0)]
    turn = math.radians(roll_deg)
    cos, sin = math.cos(turn), math.sin(turn)
    return tuple(value for px, py in points for value in (100 + px * cos - py * sin, 100 + px * sin + py * cos))


def test_head_pose_reads_roll_from_the_eyes_and_yaw_from_the_nose_between_them() -> None:
    assert head_pose(landmarks()) == pytest.approx((0.0, 0.0), abs=1e-9)
    # a tilt is the eye line's angle, whichever eye the detector names first
    assert head_pose(landmarks(roll_deg=20))[1] == pytest.approx(20.0)
    swapped = landmarks(roll_deg=-15)
    assert head_pose((*swapped[2:4], *swapped[0:2], *swapped[4:]))[1] == pytest.approx(-15.0)
    # a nose half way to an eye is asin(1/2) = 30 degrees, with the roll undone first
    assert head_pose(landmarks(yaw_offset=10))[0] == pytest.approx(30.0)
    assert head_pose(landmarks(yaw_offset=-10, roll_deg=25)) == pytest.approx((-30.0, 25.0))
    # past an eye it is profile, not an error
    assert head_pose(landmarks(yaw_offset=35))[0] == pytest.approx(90.0)


def test_a_face_is_reliable_only_inside_every_threshold_and_says_why_not() -> None:
    probs = [0.1, 0.0, 0.05, 0.6, 0.15, 0.05, 0.05]
    good = face_quality((0, 0, 80, 90), probs, sharpness=quality.MIN_SHARPNESS + 1, yaw=0.0, roll=0.0)
    assert good.reliable and good.size_px == 90
    assert good.top_probability == pytest.approx(0.6) and good.margin == pytest.approx(0.45)
    bad = face_quality((0, 0, quality.MIN_SIZE_PX - 1, quality.MIN_SIZE_PX - 2), probs,
                       sharpness=quality.MIN_SHARPNESS - 1, yaw=-(quality.MAX_ABS_YAW + 1),
                       roll=quality.MAX_ABS_ROLL + 1)
    assert not bad.reliable and bad.unreliable_because == ("small", "blurred", "turned", "tilted")
    # a measure the detector could not give (Haar: no landmarks) does not count against a face
    assert face_quality((0, 0, 80, 80), probs, sharpness=quality.MIN_SHARPNESS, yaw=None, roll=None).reliable
    assert good.to_dict()["unreliable_because"] == [] and bad.to_dict()["reliable"] is False


def test_the_sql_rule_and_the_python_rule_agree(tmp_path: Path) -> None:
    # given faces spread over every measure, in a SQLite table
    from sqlalchemy import create_engine, insert, select
    from sqlalchemy.orm import Session

    from fervid.tables import Base, Face

    engine = create_engine(f"sqlite:///{tmp_path / 'faces.db'}")
    Base.metadata.create_all(engine, tables=[Face.__table__])  # type: ignore[list-item]
    rng = np.random.default_rng(5)
    rows = []
    for n in range(400):
        side = int(rng.integers(8, 120))
        rows.append({"job_id": "j", "frame_index": n, "face_index": 0, "segment_index": 0, "local_track": 0,
                     "track_id": 0, "x": 0, "y": 0, "w": side, "h": int(side * rng.uniform(0.8, 1.2)), "score": 0.9,
                     **dict(zip(("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
                                rng.dirichlet(np.ones(7)).tolist(), strict=True)),
                     "sharpness": None if n % 10 == 0 else float(rng.uniform(0, 1500)),
                     "yaw": None if n % 7 == 0 else float(rng.uniform(-80, 80)),
                     "roll": None if n % 7 == 0 else float(rng.uniform(-60, 60))})
    with Session(engine) as session:
        session.execute(insert(Face), rows)
        in_sql = set(session.scalars(select(Face.frame_index).where(quality.reliable_face())))
    # then SQL keeps exactly the faces the Python rule calls reliable
    in_python = {row["frame_index"] for row in rows
                 if face_quality((0, 0, row["w"], row["h"]), [0.5, 0.5], row["sharpness"], row["yaw"],
                                 row["roll"]).reliable}
    assert in_sql == in_python and 0 < len(in_sql) < len(rows)
