"""Job-finished webhooks: a small JSON POST, retried a few times, never able to fail the job."""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.request

from fervid.db import session_scope
from fervid.netpolicy import NonPublicAddress, non_public_address, open_public
from fervid.settings import get_settings
from fervid.tables import Job

log = logging.getLogger(__name__)
ATTEMPTS = 3


def notify_finished(job_id: str) -> bool:
    """POSTs {"job_id", "status", "error"} to the job's webhook_url, if it has one; True when delivered."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url:
            return False
        url = job.webhook_url
        payload = {"job_id": job.id, "status": job.status,
                   "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None}
    if (address := non_public_address(url)) is not None:
        log.warning("webhook for job %s not sent: %s resolves to %s, not a public address "
                    "(FERVID_ALLOW_PRIVATE_URLS)", job_id, url, address)
        return False
    body = json.dumps(payload).encode()
    for attempt in range(ATTEMPTS):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with open_public(request, timeout=get_settings().webhook_timeout_s) as response:
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
