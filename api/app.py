"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from api.annotated import annotated_v1
from api.auth import keys_of
from api.errors import install_error_handlers
from api.media_links import redact_tokens_in_access_log
from api.metrics import metrics
from api.routes import health, v1
from api.security_headers import SecurityHeaders
from api.viewer import install_viewer
from fervid.download_sweep import start_sweeping
from fervid.settings import get_settings
from fervid.sources import TENANT_PLACEHOLDER, parse_locations
from fervid.webhooks import signing_secrets

log = logging.getLogger(__name__)

DESCRIPTION = """Facial-emotion timelines from video. Submit a video or image, follow the job, then read its
per-frame timeline, per-track summary, CSV export or plot. Every `/v1` route needs `Authorization: Bearer <key>`;
errors are always `{"error": {"code": ..., "message": ...}}`."""


def _version() -> str:
    try:
        return version("fervid")
    except PackageNotFoundError:
        return "0+unknown"


def create_app() -> FastAPI:
    """A new app on the current settings (FERVID_*); a malformed or weak FERVID_API_KEYS or FERVID_WEBHOOK_SECRETS
    fails here, not per request."""
    settings = get_settings()
    if not keys_of(settings).current().tenants_by_digest:
        log.warning("FERVID_API_KEYS is empty: every /v1 request will be refused with 401")
    signing_secrets(settings)
    for setting, entries, scheme in (("FERVID_FILE_URI_ROOTS", settings.file_uri_roots, "file"),
                                     ("FERVID_S3_SOURCE_PREFIXES", settings.s3_source_prefixes, "s3")):
        if shared := [entry for entry in parse_locations(entries, setting, scheme) if TENANT_PLACEHOLDER not in entry]:
            log.warning("%s: %s open to every tenant (no {tenant} segment)", setting, ", ".join(shared))
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The media route keeps remote media in this machine's download cache: swept here, as workers sweep theirs.
        stop = start_sweeping(settings.download_cache_dir, settings.reaper_interval_s)
        yield
        stop.set()

    app = FastAPI(title="fervid", version=_version(), description=DESCRIPTION, lifespan=lifespan,
                  openapi_tags=[{"name": "jobs", "description": "analysis jobs and their results"},
                                {"name": "health", "description": "liveness and readiness probes (no key); metrics"}])
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(annotated_v1)
    app.include_router(health)
    app.include_router(metrics)
    install_viewer(app)  # the page at / and its routes
    app.add_middleware(SecurityHeaders)
    redact_tokens_in_access_log()  # here: uvicorn has configured its loggers by the time it calls the factory
    return app
