"""What each worker process runs (detector and why, classifier backend, precision, model), kept in the database,
which the API and the workers share wherever they run: workers write their row when they start and refresh it
while they live; /readyz lists the rows refreshed recently."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fervid.db import session_scope
from fervid.tables import Worker
from fervid.utc import as_utc, iso_utc, utc_now

log = logging.getLogger(__name__)

FORGET_AFTER = timedelta(days=1)  # rows of workers gone this long are deleted by the workers still running


@dataclass(frozen=True)
class WorkerStatus:
    name: str  # host:pid
    detector: str  # yunet | haar
    detector_reason: str
    backend: str
    precision: str
    model_name: str
    model_version: str


def publish(status: WorkerStatus, started_at: datetime, now: datetime | None = None) -> None:
    """Writes (or refreshes) this worker's row, and deletes rows of workers long gone."""
    now = now or utc_now()
    with session_scope() as session:
        session.merge(Worker(**asdict(status), started_at=started_at, seen_at=now))
        session.execute(delete(Worker).where(Worker.seen_at < now - FORGET_AFTER))


def live_workers(session: Session, seen_since: datetime) -> list[Worker]:
    return list(session.scalars(select(Worker).where(Worker.seen_at >= seen_since).order_by(Worker.name)))


def worker_to_dict(worker: Worker) -> dict[str, str | None]:
    return {"name": worker.name, "detector": worker.detector, "detector_reason": worker.detector_reason,
            "backend": worker.backend, "precision": worker.precision, "model_name": worker.model_name,
            "model_version": worker.model_version, "started_at": iso_utc(worker.started_at),
            "seen_at": iso_utc(as_utc(worker.seen_at))}


def start_publishing(status: WorkerStatus, interval_s: float) -> threading.Event:
    """Publishes `status` now and every `interval_s` in a daemon thread until the returned event is set."""
    stop = threading.Event()
    started_at = utc_now()

    def loop() -> None:
        while True:
            try:
                publish(status, started_at)
            except Exception:  # a database outage: the next refresh tries again
                log.exception("could not publish this worker's status; retrying in %.0f s", interval_s)
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="fervid-worker-status", daemon=True).start()
    return stop
