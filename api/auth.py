"""Bearer-key authentication: the key names the tenant; the tenant scopes every query."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.limits import count, current, key_subject, limits_redis, refuse_if_over
from fervid.api_keys import KeySource, key_digest
from fervid.audit import AUTH_FAILED, KEY_USED, record
from fervid.db import session_scope
from fervid.errors import Unauthorized
from fervid.settings import Settings, get_settings

# auto_error=False: a missing header is answered by Unauthorized below, in the API's error envelope.
bearer = HTTPBearer(auto_error=False, description="an API key from FERVID_API_KEYS")


@lru_cache(maxsize=8)
def key_source(entries: str, keys_file: Path | None, allow_weak: bool) -> KeySource:
    """The process's keys for these settings: built once (a weak key raises), the file re-read when it changes."""
    return KeySource(entries, keys_file, allow_weak=allow_weak)


def keys_of(settings: Settings) -> KeySource:
    return key_source(settings.api_keys, settings.api_keys_file, settings.allow_weak_api_keys)


# The settings enter the API here: routes and dependencies take them as a dependency, never read them themselves.
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _audit(action: str, **fields: str) -> None:
    with session_scope() as session:
        record(session, action, **fields)


def authenticate(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                 settings: SettingsDep) -> str:
    guard = AuthGuard(request, settings)
    tenant = None if credentials is None else keys_of(settings).current().tenant_for(credentials.credentials)
    if credentials is None or tenant is None:
        guard.failed()
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'" if credentials is None else
                           "the API key is not valid; check FERVID_API_KEYS or ask for a key")
    guard.passed(tenant, key_digest(credentials.credentials))
    return tenant


class AuthGuard:
    """The limits every way of authenticating goes through (a key, a media link's token): an address past its failed
    attempts is refused before its credential is looked at, so guessing gains nothing from 429s; a failure counts
    against the address; a success against its key's requests a minute."""

    def __init__(self, request: Request, settings: Settings) -> None:
        self.settings = settings
        self.connection = limits_redis(settings.limits_url or settings.broker_url)
        self.address = request.client.host if request.client else "unknown"
        failures, retry_after_s = current(self.connection, "auth-failed", self.address)
        refuse_if_over(failures + 1, settings.failed_auth_per_minute, retry_after_s, "failed authentications")

    def failed(self) -> None:
        failures, _ = count(self.connection, "auth-failed", self.address)
        if failures == 1:  # the audit log gets one row per failing address a minute, not one per guess
            _audit(AUTH_FAILED, client=self.address)

    def passed(self, tenant: str, digest: bytes) -> None:
        key_id = key_subject(digest)
        requests, retry_after_s = count(self.connection, "key", key_id)
        if requests == 1:
            _audit(KEY_USED, tenant=tenant, key_id=key_id[:16], client=self.address)
        refuse_if_over(requests, self.settings.requests_per_minute, retry_after_s, "requests with this API key")


def request_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


TenantDep = Annotated[str, Depends(authenticate)]
# scope="function": commit (or roll back) when the route returns, before the response goes out.
SessionDep = Annotated[Session, Depends(request_session, scope="function")]
