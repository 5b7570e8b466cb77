"""Job-finished webhooks: a small JSON POST, retried a few times, never able to fail the job.

They go out from a Celery queue of their own (`webhook_queue`), one attempt per task run, each under a total
deadline (FERVID_WEBHOOK_DEADLINE_S) and retried on RETRY_DELAYS_S, so a receiver that drips its answer holds
neither the API nor a worker's analysis. Every attempt of one event carries the same `event_id`, so a receiver
can drop duplicates.

With FERVID_WEBHOOK_SECRET set, every POST is signed for its tenant: `X-Fervid-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256 of "<t>.<body>">` under the tenant's own key (HMAC-SHA256 of the tenant name under the secret,
which the tenant reads from GET /v1/webhook-signing-key). A receiver checks the MAC and that t is recent, so a
forged or replayed notification is refused; one tenant's key cannot sign for another.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.request
import uuid
from enum import Enum

from fervid.db import session_scope
from fervid.netpolicy import RefusedDestination, non_public_address, open_public
from fervid.queue import send_webhook
from fervid.settings import Settings
from fervid.tables import Job

log = logging.getLogger(__name__)
RETRY_DELAYS_S = (10, 60)  # after the first attempt: 3 attempts in all
SIGNATURE_HEADER = "X-Fervid-Signature"
SIGNATURE_TOLERANCE_S = 300  # how old a signed timestamp a receiver should accept


def tenant_signing_key(secret: str, tenant: str) -> bytes:
    """The key a tenant's webhooks are signed with: derived, so the operator keeps one secret for all tenants."""
    return hmac.new(secret.encode(), f"fervid-webhook:{tenant}".encode(), hashlib.sha256).digest()


def sign(key: bytes, body: bytes, timestamp: int) -> str:
    """The X-Fervid-Signature value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(key: bytes, header: str, body: bytes, now: float,
           tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver runs: True when `header` signs `body` under `key` within `tolerance_s` of `now`."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, body, timestamp), f"t={timestamp},v1={fields.get('v1', '')}")


class Delivery(Enum):
    delivered = "delivered"
    failed = "failed"  # refused, timed out, answered 4xx/5xx or garbage: worth another attempt
    dropped = "dropped"  # no webhook, a job gone, or a URL that can never be delivered to: never retried


def queue_webhook(job_id: str) -> None:
    """Sends the job-finished event of a job with a webhook_url to its webhook queue (a new event id)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url:
            return
        queue = job.queue
    send_webhook(job_id, uuid.uuid4().hex, queue)


def deliver(job_id: str, event_id: str, settings: Settings) -> Delivery:
    """One attempt at POSTing {"event_id", "job_id", "status", "error"} to the job's webhook_url, within
    `settings.webhook_deadline_s`. Signed with `settings.webhook_secret`; private addresses only with
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
    if settings.webhook_secret:  # signed at each attempt: a retry carries a fresh timestamp
        headers[SIGNATURE_HEADER] = sign(tenant_signing_key(settings.webhook_secret, tenant), body, int(time.time()))
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
