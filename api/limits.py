"""Rate limits shared by every API process: fixed one-minute windows counted in Redis (INCR + EXPIRE)."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from urllib.parse import urlparse

import redis

from fervid.errors import TooManyRequests

log = logging.getLogger(__name__)

WINDOW_S = 60
KEY_PREFIX = "fervid:limit"


REDIS_SCHEMES = ("redis", "rediss", "unix")


@lru_cache(maxsize=4)
def limits_redis(url: str) -> redis.Redis | None:
    """The counters' Redis; None (no rate limits, said once) when the URL is another broker, e.g. RabbitMQ."""
    if urlparse(url).scheme not in REDIS_SCHEMES:
        log.warning("no Redis for rate limits at %s: requests are not rate-limited; set FERVID_LIMITS_URL",
                    urlparse(url).scheme + "://")
        return None
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _window() -> tuple[int, int]:
    """(this window's number, seconds until the next one starts)."""
    now = time.time()
    return int(now // WINDOW_S), WINDOW_S - int(now % WINDOW_S)


def count(connection: redis.Redis | None, kind: str, subject: str) -> tuple[int, int]:
    """Adds one to `subject`'s counter for this window; returns (the count, seconds until it resets)."""
    window, retry_after_s = _window()
    if connection is None:
        return 0, retry_after_s
    key = f"{KEY_PREFIX}:{kind}:{subject}:{window}"
    pipeline = connection.pipeline()
    pipeline.incr(key)
    pipeline.expire(key, WINDOW_S + 5)
    try:
        counted, _ = pipeline.execute()
    except redis.RedisError as error:
        return _unlimited(error, retry_after_s)
    return int(counted), retry_after_s


def current(connection: redis.Redis | None, kind: str, subject: str) -> tuple[int, int]:
    window, retry_after_s = _window()
    if connection is None:
        return 0, retry_after_s
    try:
        value = connection.get(f"{KEY_PREFIX}:{kind}:{subject}:{window}")
    except redis.RedisError as error:
        return _unlimited(error, retry_after_s)
    return int(value or 0), retry_after_s


def _unlimited(error: redis.RedisError, retry_after_s: int) -> tuple[int, int]:
    # Fail open: a Redis outage must not turn into an API outage (jobs wait for the reaper; /readyz says so).
    log.warning("rate-limit counters unavailable, not limiting: %s", error)
    return 0, retry_after_s


def key_subject(digest: bytes) -> str:
    """The key's counters by its digest (fervid.api_keys.key_digest), never the key itself."""
    return digest.hex()[:32]


def refuse_if_over(counted: int, limit: int, retry_after_s: int, what: str) -> None:
    if counted > limit:
        raise TooManyRequests(f"{what}: more than {limit} in a minute; retry after {retry_after_s} s",
                              retry_after_s=retry_after_s)
