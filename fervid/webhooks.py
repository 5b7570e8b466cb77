"""Job-finished webhooks: a small JSON POST, retried a few times, never able to fail the job.

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

from fervid.db import session_scope
from fervid.netpolicy import NonPublicAddress, non_public_address, open_public
from fervid.settings import Settings
from fervid.tables import Job

log = logging.getLogger(__name__)
ATTEMPTS = 3
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


def notify_finished(job_id: str, settings: Settings) -> bool:
    """POSTs {"job_id", "status", "error"} to the job's webhook_url, if it has one; True when delivered.

    Signed with `settings.webhook_secret`; private addresses only with `settings.allow_private_urls`."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url:
            return False
        url, tenant = job.webhook_url, job.tenant
        payload = {"job_id": job.id, "status": job.status,
                   "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None}
    if (address := non_public_address(url, settings.allow_private_urls)) is not None:
        log.warning("webhook for job %s not sent: %s resolves to %s, not a public address "
                    "(FERVID_ALLOW_PRIVATE_URLS)", job_id, url, address)
        return False
    body = json.dumps(payload).encode()
    secret = settings.webhook_secret
    for attempt in range(ATTEMPTS):
        headers = {"Content-Type": "application/json"}
        if secret:  # signed at each attempt: a retry carries a fresh timestamp
            headers[SIGNATURE_HEADER] = sign(tenant_signing_key(secret, tenant), body, int(time.time()))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with open_public(request, settings.webhook_timeout_s, settings.allow_private_urls) as response:
                if response.status < 300:
                    return True
        except NonPublicAddress as error:  # redirected there, or the name now resolves there: never retried
            log.warning("webhook for job %s not sent: %s", job_id, error)
            return False
        except (OSError, http.client.HTTPException) as error:  # refused, timed out, 4xx/5xx, garbled reply
            log.info("webhook for job %s to %s failed (attempt %d): %s", job_id, url, attempt + 1, error)
        except ValueError as error:  # a URL urllib cannot send to (e.g. a non-numeric port): retrying cannot help
            log.warning("webhook for job %s not sent: %s is not a usable URL (%s)", job_id, url, error)
            return False
        if attempt + 1 < ATTEMPTS:
            time.sleep(2**attempt)
    return False
