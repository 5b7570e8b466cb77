"""Job-finished webhooks: a small JSON POST, retried a few times, never able to fail the job.

A job's end owes its webhook in the same transaction (fervid.lifecycle's outbox, which also sends it). They go out
from a Celery queue of their own (`webhook_queue`), one attempt per task run, each under a total deadline
(FERVID_WEBHOOK_DEADLINE_S); a failed attempt is due again after the next of RETRY_DELAYS_S, so a receiver that
drips its answer holds neither the API nor a worker's analysis. Every attempt of one event carries the same
`event_id`, so a receiver can drop duplicates.

With signing secrets set (FERVID_WEBHOOK_SECRETS="v2:<secret>,v1:<secret>", the first signs; or the single
FERVID_WEBHOOK_SECRET, key id v1), every POST is signed for its tenant: `X-Fervid-Signature: t=<unix seconds>,
kid=v2,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the tenant's own key of that version (HMAC-SHA256 of the
tenant name under the secret, which the tenant reads from GET /v1/webhook-signing-key), then a `kid=...,v1=...`
pair for each older secret still configured, so a receiver holding only the old key keeps verifying while the
operator rotates. A receiver checks the MAC of a kid it holds and that t is recent, so a forged or replayed
notification is refused; one tenant's key cannot sign for another.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import re
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from fervid.api_keys import check_key_strength
from fervid.db import session_scope
from fervid.netpolicy import RefusedDestination, non_public_address, open_public
from fervid.settings import Settings
from fervid.tables import Job

log = logging.getLogger(__name__)
RETRY_DELAYS_S = (10, 60)  # after the first attempt: 3 attempts in all
SIGNATURE_HEADER = "X-Fervid-Signature"
SIGNATURE_TOLERANCE_S = 300  # how old a signed timestamp a receiver should accept
LEGACY_KID = "v1"  # the key id of FERVID_WEBHOOK_SECRET: name the old secret so in FERVID_WEBHOOK_SECRETS
KID = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # nothing that could end a header field


@dataclass(frozen=True)
class SigningSecret:
    """One version of the operator's webhook secret."""

    kid: str
    secret: str = field(repr=False)


def parse_signing_secrets(entries: str, legacy_secret: str = "") -> tuple[SigningSecret, ...]:
    """FERVID_WEBHOOK_SECRETS (`kid:secret`, comma-separated, the first signs) or FERVID_WEBHOOK_SECRET (one secret,
    kid v1); empty: webhooks go unsigned. A malformed entry, a repeated kid or a weak secret raises."""
    if entries.strip() and legacy_secret:
        raise ValueError("both FERVID_WEBHOOK_SECRETS and FERVID_WEBHOOK_SECRET are set; move the old secret into "
                         f"FERVID_WEBHOOK_SECRETS as {LEGACY_KID}:<secret> and unset FERVID_WEBHOOK_SECRET")
    if legacy_secret:
        entries = f"{LEGACY_KID}:{legacy_secret}"
    secrets: list[SigningSecret] = []
    for number, entry in enumerate(filter(None, (part.strip() for part in entries.split(","))), 1):
        kid, sep, secret = entry.partition(":")
        if not sep or not KID.fullmatch(kid) or not secret:  # named by position: the entry may be a bare secret
            raise ValueError(f"FERVID_WEBHOOK_SECRETS entry {number} is not kid:secret (a kid is 1-32 letters, "
                             "digits, '_', '.' or '-')")
        if any(known.kid == kid for known in secrets):
            raise ValueError(f"FERVID_WEBHOOK_SECRETS names kid {kid!r} twice; give each secret its own kid")
        check_key_strength(f"FERVID_WEBHOOK_SECRETS: kid {kid!r}", secret)
        secrets.append(SigningSecret(kid, secret))
    return tuple(secrets)


@lru_cache(maxsize=8)
def _signing_secrets(entries: str, legacy_secret: str) -> tuple[SigningSecret, ...]:
    return parse_signing_secrets(entries, legacy_secret)


def signing_secrets(settings: Settings) -> tuple[SigningSecret, ...]:
    """This process's webhook secrets, the signing one first; the API and `fervid worker` call it at start-up,
    so a weak or malformed one stops them there."""
    return _signing_secrets(settings.webhook_secrets, settings.webhook_secret)


def tenant_signing_key(secret: str, tenant: str) -> bytes:
    """The key a tenant's webhooks are signed with: derived, so the operator keeps one secret for all tenants."""
    return hmac.new(secret.encode(), f"fervid-webhook:{tenant}".encode(), hashlib.sha256).digest()


def tenant_signing_keys(secrets: Sequence[SigningSecret], tenant: str) -> list[tuple[str, bytes]]:
    """(kid, key) of each secret version for `tenant`, the signing one first."""
    return [(secret.kid, tenant_signing_key(secret.secret, tenant)) for secret in secrets]


def _mac(key: bytes, body: bytes, timestamp: str) -> str:
    return hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(keys: Sequence[tuple[str, bytes]], body: bytes, timestamp: int) -> str:
    """The X-Fervid-Signature value for `body` sent at `timestamp` (unix seconds): one kid/v1 pair per (kid, key)."""
    return ",".join([f"t={timestamp}", *(f"kid={kid},v1={_mac(key, body, str(timestamp))}" for kid, key in keys)])


def verify(keys: Mapping[str, bytes], header: str, body: bytes, now: float,
           tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver runs (docs/api.md shows the same in a few lines): True when `header` signs `body` under one of
    `keys` (kid -> key) within `tolerance_s` of `now`."""
    fields = [part.partition("=")[::2] for part in header.split(",")]
    stamps = [value for name, value in fields if name == "t"]
    # One t only: a second one could pair a fresh time with the MAC of a replayed old one.
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > tolerance_s:
        return False
    kid, valid = "", False
    for name, value in fields:
        if name == "kid":
            kid = value
        elif name == "v1" and kid in keys:
            valid |= hmac.compare_digest(_mac(keys[kid], body, stamps[0]), value)
    return valid


class Delivery(Enum):
    delivered = "delivered"
    failed = "failed"  # refused, timed out, answered 4xx/5xx or garbage: worth another attempt
    dropped = "dropped"  # no webhook, a job gone, or a URL that can never be delivered to: never retried


def deliver(job_id: str, event_id: str, settings: Settings) -> Delivery:
    """One attempt at POSTing {"event_id", "job_id", "status", "error"} to the job's webhook_url, within
    `settings.webhook_deadline_s`. Signed with `signing_secrets(settings)`; private addresses only with
    `settings.allow_private_urls`."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url:
            return Delivery.dropped
        url, tenant = job.webhook_url, job.tenant
        payload = {"event_id": event_id, "job_id": job.id, "status": job.status,
                   "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None}
    if (address := non_public_address(url, settings.allow_private_urls)) is not None:
        log.warning("webhook for job %s not sent: %s resolves to %s, not a public address "
                    "(FERVID_ALLOW_PRIVATE_URLS)", job_id, url, address)
        return Delivery.dropped
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secrets := signing_secrets(settings):  # signed at each attempt: a retry carries a fresh timestamp
        headers[SIGNATURE_HEADER] = sign(tenant_signing_keys(secrets, tenant), body, int(time.time()))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with open_public(request, settings.webhook_timeout_s, settings.allow_private_urls,
                         deadline_s=settings.webhook_deadline_s) as response:
            if response.status < 300:
                return Delivery.delivered
    except RefusedDestination as error:  # redirected to a private address or off http(s), or the name now
        # resolves to a private address: never retried
        log.warning("webhook for job %s not sent: %r (%s)", job_id, error, getattr(error, "address", ""))
        return Delivery.dropped
    except (ValueError, http.client.InvalidURL) as error:  # a URL urllib cannot send to: retrying cannot help
        log.warning("webhook for job %s not sent: %s is not a usable URL (%s)", job_id, url, error)
        return Delivery.dropped
    except (OSError, http.client.HTTPException) as error:  # refused, timed out, 4xx/5xx, garbled, too slow
        log.info("webhook for job %s to %s failed: %s", job_id, url, error)
    return Delivery.failed
