"""Crafted input never makes a 5xx: deep JSON, integers past the database's columns, NUL in text, and a
property-based walk of the OpenAPI schema (schemathesis) against the real app on PostgreSQL."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.integration.test_api import ALICE, Api, assert_error, make_client, running_api, submit_uri

pytestmark = pytest.mark.integration

DEEP = 30_000  # far past CPython's recursion limit, inside the 64 KB JSON budget


@pytest.fixture
def api(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(pg_url, redis_url, fervid_env) as running:
        running.client = make_client(raise_server_exceptions=False)  # a bug must show as the 500 a client sees
        yield running


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_deeply_nested_json_in_a_body_is_a_400(api: Api) -> None:
    # when
    response = api.client.post("/v1/jobs", headers={**ALICE, "Content-Type": "application/json"},
                               content=b"[" * DEEP + b"]" * DEEP)
    # then
    assert_error(response, 400, "bad_request")


@pytest.mark.parametrize("raw", [
    b"[" * 5000 + b"]" * 5000,
    b'{"frame_index": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    json.dumps({"frame_index": 1 << 64}).encode(),
    json.dumps({"frame_index": (1 << 31)}).encode(),
    json.dumps({"frame_index": -1}).encode(),
], ids=["nested", "nested-value", "past-2^63", "past-int32", "negative"])
def test_a_crafted_timeline_cursor_is_a_422(api: Api, raw: bytes) -> None:
    job_id = submit_uri(api).json()["job_id"]
    response = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params={"cursor": cursor_of(raw)})
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("position", [
    {"created_at": "2026-01-01T00:00:00Z", "job_id": "a\x00b"},
    {"created_at": "0001-01-01T00:00:00+14:00", "job_id": "a"},
    {"created_at": "2026-01-01T00:00:00Z", "job_id": "x" * 100},
], ids=["nul", "no-utc-time", "long-id"])
def test_a_crafted_job_list_cursor_is_a_422(api: Api, position: dict[str, str]) -> None:
    response = api.client.get("/v1/jobs", headers=ALICE, params={"cursor": cursor_of(json.dumps(position).encode())})
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("track_id", [str(1 << 64), str(1 << 63), str(1 << 40), str(-(1 << 63) - 1)])
def test_a_track_id_past_the_column_is_a_422(api: Api, track_id: str) -> None:
    job_id = submit_uri(api).json()["job_id"]
    response = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params={"track_id": track_id})
    assert_error(response, 422, "invalid_request")


def test_nul_in_a_job_id_is_a_404_and_in_a_token_a_422(api: Api) -> None:
    assert_error(api.client.get("/v1/jobs/a%00b", headers=ALICE), 404, "not_found")
    assert_error(submit_uri(api, client_request_token="a\x00b"), 422, "invalid_request")
    assert_error(submit_uri(api, webhook_url="http://example.com/\x00"), 422, "invalid_request")


def test_nul_in_an_uploaded_file_name_is_dropped(api: Api) -> None:
    # given a multipart body written by hand (httpx would escape the NUL)
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="cl\x00ip.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\ndata\r\n--b--\r\n")
    # when
    response = api.client.post("/v1/jobs", headers={**ALICE, "Content-Type": "multipart/form-data; boundary=b"},
                               content=body)
    # then
    assert response.status_code == 202, response.text
    assert response.json()["filename"] == "clip.mp4"


# --- property-based: every operation of the OpenAPI document, generated requests, on PostgreSQL ------------------

def test_generated_requests_get_no_5xx_and_match_the_schema(api: Api) -> None:
    # given every operation the app documents
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures = {}
    for operation in operations:
        # Bounded: 25 generated requests per operation keep the walk to seconds; the deep cases are above.
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        @given(case=operation.as_strategy())
        def generated(case: Any) -> None:
            # when the request is sent as a tenant; then no 5xx, and status, headers and body match the document
            # positive_data_acceptance is left out: URI schemes and locations are checked by code, not by the
            # JSON Schema, so a schema-valid source_uri may rightly be a 422.
            case.call_and_validate(headers=ALICE, excluded_checks=[positive_data_acceptance])

        try:
            generated()
        except Exception as error:  # every operation is walked, then all failures are reported together
            failures[operation.label] = str(error)[:1500]
    assert not failures, "\n\n".join(f"{label}: {error}" for label, error in failures.items())
