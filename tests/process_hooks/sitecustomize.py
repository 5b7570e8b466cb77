"""Test seams in real worker processes, outside the product: a test that starts a worker with this folder on its
PYTHONPATH (tests.integration.conftest.ServiceEnv.start_worker(crash_on=...)) makes it die where a crash would.

FERVID_TEST_CRASH_ON="<stage>:<filename>" (filename * for any job) makes the process os._exit(70), as a decoder
crash or a SIGKILL would end it, at that stage of a job whose uploaded file has that name:
- prepare: once the prepare is claimed, before the media is probed;
- segment: once a segment is claimed, before it is analysed;
- webhook: after a job's end is committed, before its owed webhook is sent.
With FERVID_TEST_CRASH_ONCE=1 each job crashes there once (a marker in FERVID_TEST_LOG_DIR remembers it).
Python imports this module at start-up (site.py), and it wraps the functions as their modules load.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

STAGE, _, FILENAME = os.environ.get("FERVID_TEST_CRASH_ON", "").partition(":")


def _crash(stage: str, job_id: str) -> None:
    from fervid.db import session_scope
    from fervid.tables import Job

    with session_scope() as session:
        filename = session.get(Job, job_id).filename  # type: ignore[union-attr]
    if FILENAME not in ("*", filename):
        return
    if os.environ.get("FERVID_TEST_CRASH_ONCE"):
        marker = Path(os.environ["FERVID_TEST_LOG_DIR"]) / f"crashed-{stage}-{job_id}"
        if marker.exists():
            return
        marker.touch()
    print(f"FERVID_TEST_CRASH_ON={stage}:{filename}: job {job_id}: exiting", file=sys.stderr, flush=True)
    os._exit(70)


def _wrap_runner(module: ModuleType) -> None:
    probe_segments = module.probe_segments

    def probing(path: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
        _crash("prepare", job.id)
        return probe_segments(path, job, *args, **kwargs)

    module.probe_segments = probing


def _wrap_lifecycle(module: ModuleType) -> None:
    claim_segment, send_webhook = module.claim_segment, module.send_webhook

    def claiming(job_id: str, *args: Any, **kwargs: Any) -> Any:
        plan = claim_segment(job_id, *args, **kwargs)
        if plan is not None and STAGE == "segment":
            _crash("segment", job_id)
        return plan

    def sending(job_id: str, *args: Any, **kwargs: Any) -> None:
        if STAGE == "webhook":
            _crash("webhook", job_id)
        send_webhook(job_id, *args, **kwargs)

    module.claim_segment, module.send_webhook = claiming, sending


WRAPS: dict[str, Callable[[ModuleType], None]] = {"fervid.lifecycle": _wrap_lifecycle}
if STAGE == "prepare":
    WRAPS["worker.runner"] = _wrap_runner


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, wrap: Callable[[ModuleType], None]) -> None:
        self.inner, self.wrap = inner, wrap

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        self.wrap(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if name not in WRAPS:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target)  # type: ignore[attr-defined]
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, WRAPS[name])
                return spec
        return None


if STAGE:
    sys.meta_path.insert(0, _Finder())
