"""A job's remote media for the viewer (an http(s) source, an s3:// source or upload store), fetched in the background.

A download may take up to the download deadline (FERVID_DOWNLOAD_TIMEOUT_S): inside a request it would hold a thread
of the API's pool for that long, and many such requests would stall every route. Here the media route answers 202
while one of FETCH_THREADS threads of its own fetches the media into this machine's download cache (where the sweep
removes it with the job), then serves it from there. A failed fetch is answered with its error for FAILURE_KEPT_S,
then tried again.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fervid.errors import INTERNAL_ERROR, FervidError, TooManyRequests
from fervid.media_store import Downloads, local_copy
from fervid.settings import Settings
from fervid.sources import SourceFence

log = logging.getLogger(__name__)

FETCH_THREADS = 2
MAX_WAITING = 16  # fetches asked for and not finished, all tenants together
MAX_WAITING_PER_TENANT = 2
FAILURE_KEPT_S = 60.0
RETRY_AFTER_S = 2


@dataclass(frozen=True)
class _Failure:
    error: FervidError
    at: float  # time.monotonic()


class MediaFetcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, str] = {}  # "<job id> <uri>" -> tenant
        self._failures: dict[str, _Failure] = {}
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="media-fetch")

    def request(self, tenant: str, job_id: str, uri: str, settings: Settings, fence: SourceFence | None) -> None:
        """Starts fetching `uri` (the job's media, or a file a worker stored for it) unless that is under way; raises
        the last fetch's error if it failed within FAILURE_KEPT_S, TooManyRequests when too many fetches wait."""
        fetch = f"{job_id} {uri}"
        with self._lock:
            failure = self._failures.get(fetch)
            if failure is not None and time.monotonic() - failure.at < FAILURE_KEPT_S:
                raise failure.error
            self._failures.pop(fetch, None)
            if fetch in self._waiting:
                return
            tenants_waiting = sum(1 for owner in self._waiting.values() if owner == tenant)
            if len(self._waiting) >= MAX_WAITING or tenants_waiting >= MAX_WAITING_PER_TENANT:
                raise TooManyRequests("the API is fetching other media for the viewer; retry in a moment",
                                      retry_after_s=RETRY_AFTER_S)
            self._waiting[fetch] = tenant
        self._pool.submit(self._fetch, fetch, job_id, uri, settings, fence)

    def _fetch(self, fetch: str, job_id: str, uri: str, settings: Settings, fence: SourceFence | None) -> None:
        try:
            with local_copy(uri, Downloads.from_settings(settings), cache_key=job_id, fence=fence):
                pass  # in the download cache now, where the media route finds it
        except FervidError as error:
            self._fail(fetch, error)
        except Exception:
            log.exception("job %s: fetching %s for the viewer failed", job_id, uri)
            self._fail(fetch, FervidError("the media could not be fetched", code=INTERNAL_ERROR))
        finally:
            with self._lock:
                self._waiting.pop(fetch, None)

    def _fail(self, fetch: str, error: FervidError) -> None:
        with self._lock:
            now = time.monotonic()
            for stale in [key for key, failure in self._failures.items() if now - failure.at >= FAILURE_KEPT_S]:
                del self._failures[stale]
            self._failures[fetch] = _Failure(error, now)


media_fetcher = MediaFetcher()  # one per API process: its threads are the bound
