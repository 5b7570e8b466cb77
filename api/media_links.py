"""Media links: job-scoped, expiring capabilities for elements that cannot send a header (<video src>).

A token is `<expiry, unix seconds>.<hex HMAC-SHA256>`, nothing else: parsed strictly (ASCII digits, bounded
lengths), any other text is 401. It is signed with a key per tenant derived from a server secret and the digest of
the tenant's API key, so neither the key nor its digest enters a URL, and whoever can read the key configuration
(digests included) still cannot mint a link. The secret is FERVID_MEDIA_LINK_SECRET, else one the API processes
share in Redis (created by the first), else, with no Redis, one per process (said once in the log).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

import redis

from api.limits import limits_redis
from fervid.errors import NOT_READY, FervidError
from fervid.settings import Settings

log = logging.getLogger(__name__)

TOKEN = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")
SHARED_SECRET_KEY = "fervid:media-link-secret"
_secrets: dict[str, bytes] = {}  # by Redis URL: fetched once per process


def link_secret(settings: Settings) -> bytes:
    if settings.media_link_secret:
        return settings.media_link_secret.encode()
    url = settings.limits_url or settings.broker_url
    if url not in _secrets:
        connection = limits_redis(url)
        if connection is None:
            log.warning("media links are signed with a secret of this API process only: set FERVID_MEDIA_LINK_SECRET "
                        "when several API processes serve them")
            _secrets[url] = secrets.token_bytes(32)
        else:
            try:
                connection.set(SHARED_SECRET_KEY, secrets.token_hex(32), nx=True)
                shared = connection.get(SHARED_SECRET_KEY)
            except redis.RedisError as error:
                raise FervidError(f"media links cannot be signed or checked now ({error}); retry shortly",
                                  code=NOT_READY, http_status=503) from error
            assert isinstance(shared, bytes)
            _secrets[url] = shared
    return _secrets[url]


def _signature(secret: bytes, key_digest: bytes, job_id: str, expires: int) -> str:
    tenant_key = hmac.new(secret, b"media-link\n" + key_digest, hashlib.sha256).digest()
    return hmac.new(tenant_key, f"media\n{job_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def media_token(secret: bytes, key_digest: bytes, job_id: str, expires: int) -> str:
    return f"{expires}.{_signature(secret, key_digest, job_id, expires)}"


def key_for_media_token(token: str, job_id: str, secret: bytes, tenants_by_digest: dict[bytes, str],
                        now: float) -> tuple[str, bytes] | None:
    """The tenant, and the digest of its key, that signed `token` for `job_id`, if it is well formed and has not
    expired."""
    parsed = TOKEN.fullmatch(token)
    if parsed is None or int(parsed[1]) < now:
        return None
    signer = None
    for digest, owner in tenants_by_digest.items():  # every key compared, so the time does not tell which matched
        if hmac.compare_digest(parsed[2], _signature(secret, digest, job_id, int(parsed[1]))):
            signer = owner, digest
    return signer


class RedactTokens(logging.Filter):
    """Keeps media-link tokens out of uvicorn's access log (they are capabilities for six hours)."""

    QUERY_TOKEN = re.compile(r"(?<=[?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.QUERY_TOKEN.sub("[redacted]", arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        return True


def redact_tokens_in_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, RedactTokens) for existing in access.filters):
        access.addFilter(RedactTokens())
