"""The audit log: one row per delete, expiry, and key use (per key and minute), in the audit_events table."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from fervid.tables import AuditEvent
from fervid.utc import utc_now

JOB_DELETED = "job.deleted"  # by its tenant, through DELETE
JOB_EXPIRED = "job.expired"  # by the reaper, past FERVID_RETENTION_DAYS
KEY_USED = "key.used"  # the first request with a key in a minute
AUTH_FAILED = "auth.failed"  # the first failed authentication from an address in a minute


def record(session: Session, action: str, *, tenant: str | None = None, job_id: str | None = None,
           key_id: str | None = None, client: str | None = None) -> None:
    """Adds the event to `session`: it commits (or not) with what it records."""
    session.add(AuditEvent(id=str(uuid.uuid4()), at=utc_now(), action=action, tenant=tenant, job_id=job_id,
                           key_id=key_id, client=client[:64] if client else None))
