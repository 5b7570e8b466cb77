"""Request validation, response shapes and the opaque pagination cursors of the HTTP API."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from api.errors import describe_validation_errors
from api.schemas import JobFromUri, JobListCursor, JobOptions, Summary, TimelineCursor
from fervid.api_keys import KeyRing
from fervid.errors import InvalidRequest
from fervid.labels import EMOTIONS
from fervid.results import dominant


def test_a_timeline_cursor_round_trips_and_is_opaque() -> None:
    # given a position in a timeline
    cursor = TimelineCursor(frame_index=4711)
    # when it is encoded and decoded
    encoded = cursor.encode()
    decoded = TimelineCursor.decode(encoded)
    # then it comes back whole, as a URL-safe token that does not spell out the frame index
    assert decoded.frame_index == 4711
    assert "4711" not in encoded and "=" not in encoded and "/" not in encoded and "+" not in encoded


def test_a_job_list_cursor_keeps_microseconds_and_the_time_zone() -> None:
    # given a creation time with microseconds (ties are broken by the job id)
    created = datetime(2026, 11, 28, 3, 1, 41, 159358, tzinfo=UTC)
    # when the cursor round-trips
    decoded = JobListCursor.decode(JobListCursor(created_at=created, job_id="b1").encode())
    # then the keyset position is exact
    assert decoded.created_at == created and decoded.job_id == "b1"


@pytest.mark.parametrize("garbage", ["", "not base64 !", base64.urlsafe_b64encode(b"[1, 2]").decode(),
                                     base64.urlsafe_b64encode(b'{"frame_index": "x"}').decode(),
                                     base64.urlsafe_b64encode(b'{"frame_index": 1, "extra": 2}').decode(),
                                     base64.urlsafe_b64encode(b"\xff\xfe").decode()])
def test_a_cursor_the_api_did_not_hand_out_is_an_invalid_request(garbage: str) -> None:
    # given a cursor that is not one of ours
    # when it is decoded, then the error says what to do, with the 422 code of InvalidRequest
    with pytest.raises(InvalidRequest, match="start again without it") as raised:
        TimelineCursor.decode(garbage)
    assert raised.value.http_status == 422


def test_a_job_list_cursor_is_not_accepted_as_a_timeline_cursor() -> None:
    # given a cursor from the job list
    cursor = JobListCursor(created_at=datetime.now(UTC), job_id="j").encode()
    # when it is used for a timeline, then it is refused rather than misread
    with pytest.raises(InvalidRequest):
        TimelineCursor.decode(cursor)


@pytest.mark.parametrize("fps", [0, -1, 120.5, float("nan"), float("inf")])
def test_sample_fps_outside_0_to_120_is_refused(fps: float) -> None:
    # given / when / then
    with pytest.raises(ValidationError, match="sample_fps"):
        JobOptions(sample_fps=fps)


def test_sample_fps_defaults_to_5_and_accepts_the_bounds_inside() -> None:
    # given / when
    default, top, small = JobOptions(), JobOptions(sample_fps=120), JobOptions(sample_fps=0.01)
    # then
    assert (default.sample_fps, top.sample_fps, small.sample_fps) == (5.0, 120.0, 0.01)


@pytest.mark.parametrize("uri", ["file:///data/clip.mp4", "s3://bucket/key/clip.mov", "http://host/clip.mp4",
                                 "https://host:8443/a/b.mp4?sig=1"])
def test_supported_source_uris_are_accepted(uri: str) -> None:
    # given / when
    spec = JobFromUri(source_uri=uri)
    # then
    assert spec.source_uri == uri


@pytest.mark.parametrize("uri", ["ftp://host/clip.mp4", "/data/clip.mp4", "gs://bucket/clip.mp4", "s3://",
                                 "https://", "file://", "javascript:alert(1)", ""])
def test_other_source_uris_are_refused(uri: str) -> None:
    # given / when / then
    with pytest.raises(ValidationError, match="source_uri"):
        JobFromUri(source_uri=uri)


def test_a_webhook_must_be_http() -> None:
    # given / when / then
    with pytest.raises(ValidationError, match="webhook_url"):
        JobOptions(webhook_url="file:///etc/passwd")
    assert JobOptions(webhook_url="https://hooks.example/x").webhook_url == "https://hooks.example/x"


@pytest.mark.parametrize("url", ["http://hooks.example:abc/x", "https://hooks.example:99999/x",
                                 "http://hooks example/x"])
def test_a_webhook_urllib_cannot_send_to_is_refused_at_submission(url: str) -> None:
    # given a webhook URL that parses but that no request can be sent to
    # when / then it is refused now, not silently dropped when the job finishes
    with pytest.raises(ValidationError, match="webhook_url"):
        JobOptions(webhook_url=url)
    assert JobOptions(webhook_url="http://hooks.example:8080/x").webhook_url == "http://hooks.example:8080/x"


def test_an_unknown_option_is_refused_rather_than_ignored() -> None:
    # given a typo for sample_fps
    # when / then
    with pytest.raises(ValidationError, match="fps"):
        JobOptions.model_validate({"fps": 2})


def test_validation_errors_are_described_by_field() -> None:
    # given pydantic's errors for a bad sample_fps
    with pytest.raises(ValidationError) as raised:
        JobFromUri.model_validate({"source_uri": "s3://b/k", "sample_fps": 500})
    # when they are turned into the envelope's message
    message = describe_validation_errors(raised.value.errors())
    # then the field is named, without the "body" prefix
    assert message.startswith("sample_fps: ") and "120" in message


def test_the_key_decides_the_tenant_and_an_unknown_key_none() -> None:
    # given two tenants
    keys = KeyRing.parse("alice:alice-key,bob:bob-key", allow_weak=True)
    # when / then
    assert keys.tenant_for("bob-key") == "bob"
    assert keys.tenant_for("bob-ke") is None
    assert keys.tenant_for("") is None


def test_the_dominant_emotion_is_the_argmax_and_ties_go_to_fer_order() -> None:
    # given / when / then
    assert dominant(dict.fromkeys(EMOTIONS, 0.0) | {"sad": 0.6, "happy": 0.4}) == "sad"
    assert dominant(dict.fromkeys(EMOTIONS, 0.5)) == "angry"


def test_a_summary_must_name_all_emotions_by_their_fer_labels() -> None:
    # given a summary with a label outside FER-2013
    means = dict.fromkeys(EMOTIONS, 0.1) | {"contempt": 0.3}
    body = {"tracks": [{"track_id": 1, "first_ms": 0, "last_ms": 1, "frames": 2, "mean_emotions": means,
                        "dominant": "contempt"}], "overall": {"mean_emotions": None, "dominant": None}}
    # when / then
    with pytest.raises(ValidationError):
        Summary.model_validate(body)
