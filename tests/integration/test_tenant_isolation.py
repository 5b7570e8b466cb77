"""The tenant-isolation matrix, generated from the app's routes: for every route naming a job, another tenant's
job and a missing one get the same status, body and headers (nothing tells a guesser the id exists), while the
owner gets an answer. A route added later is covered without touching this file."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from tests.integration.test_api import ALICE, BOB, Api, running_api, submit_uri

pytestmark = pytest.mark.integration

PLACEHOLDER = "{job_id}"


@pytest.fixture
def api(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(pg_url, redis_url, fervid_env) as running:
        yield running


def job_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route with a job id in its path."""
    # iter_route_contexts: included routers nest, this walks them with their prefixes.
    return sorted((method, route.path) for route in iter_route_contexts(app.routes)
                  if route.path and PLACEHOLDER in route.path for method in route.methods or ())


def seen(response: httpx.Response, job_id: str) -> tuple[int, str, dict[str, str]]:
    # The id asked for may be echoed back; with it masked, nothing else may differ.
    return (response.status_code, response.text.replace(job_id, PLACEHOLDER),
            {name: value.replace(job_id, PLACEHOLDER) for name, value in response.headers.items()})


def isolation_leaks(api: Api, client: TestClient) -> dict[str, str]:
    """For each job route: what differs between another tenant's job and a missing id, or an owner refused."""
    leaks = {}
    for method, route in job_routes(client.app):  # type: ignore[arg-type]
        # Path parameters besides the job id get a well-formed value (a frame index 0): the matrix asks about the
        # job, and a job of alice's that has not run yet has no frame 0, so the owner's 404 is then about the frame.
        template = re.sub(r"\{(?!job_id\})[a-z_]+\}", "0", route)
        job_id = submit_uri(api).json()["job_id"]  # a fresh job of alice's for each route: DELETE consumes it
        missing = str(uuid.uuid4())
        other = seen(client.request(method, template.replace(PLACEHOLDER, job_id), headers=BOB), job_id)
        absent = seen(client.request(method, template.replace(PLACEHOLDER, missing), headers=BOB), missing)
        owner = client.request(method, template.replace(PLACEHOLDER, job_id), headers=ALICE)
        if other != absent:
            leaks[f"{method} {route}"] = f"other tenant {other} != missing {absent}"
        elif other[0] != 404:
            leaks[f"{method} {route}"] = f"other tenant got {other[0]}, not 404"
        elif owner.status_code == 404 and template == route:
            leaks[f"{method} {route}"] = "the owner got 404"
    return leaks


def test_other_tenants_jobs_look_exactly_like_missing_ones_on_every_job_route(api: Api) -> None:
    # given every route of the app with a job id (GET, POST cancel, DELETE, ...)
    routes = job_routes(api.client.app)  # type: ignore[arg-type]
    assert {("GET", "/v1/jobs/{job_id}"), ("DELETE", "/v1/jobs/{job_id}"),
            ("POST", "/v1/jobs/{job_id}/cancel")} <= set(routes)
    # when each is asked by the owner, by another tenant and for a missing id; then nothing leaks
    assert isolation_leaks(api, api.client) == {}


def test_the_matrix_catches_a_new_route_that_leaks(api: Api) -> None:
    # given the app plus a route that answers 403 for someone else's job and 404 for a missing one
    from fastapi import Request
    from sqlalchemy import select

    from fervid.db import session_scope
    from fervid.tables import Job

    leaky = APIRouter()

    @leaky.get("/v1/jobs/{job_id}/peek")
    def peek(job_id: str, request: Request) -> dict[str, str]:
        with session_scope() as session:
            exists = session.scalar(select(Job.id).where(Job.id == job_id)) is not None
        from fastapi import HTTPException

        if request.headers.get("authorization") != ALICE["Authorization"]:
            raise HTTPException(403 if exists else 404)
        return {"job_id": job_id}

    app = api.client.app
    assert isinstance(app, FastAPI)
    app.include_router(leaky)
    # when the matrix runs; then exactly the new route is reported
    assert list(isolation_leaks(api, TestClient(app))) == ["GET /v1/jobs/{job_id}/peek"]
