"""Result storage into PostgreSQL, with a raw COPY baseline of the same rows measured in the same run.

    .venv/bin/python bench/store_bench.py [--segments 20] [--frames 150] [--faces 2] [--repeat 3]

Needs a PostgreSQL server (FERVID_TEST_PG_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test); it
works in a fresh scratch database that it drops at the end. Prints rows/s of store_segment (first write and an
idempotent rewrite) against COPY into scratch tables shaped like `frames` and `faces`, and rows/s of keyset-paged
timeline reads against one unpaged read of the same rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fervid import lifecycle  # noqa: E402
from fervid.db import engine_for, session_scope  # noqa: E402
from fervid.labels import EMOTIONS  # noqa: E402
from fervid.lifecycle import JobStatus  # noqa: E402
from fervid.migrate import upgrade  # noqa: E402
from fervid.sampling import PlannedFrame  # noqa: E402
from fervid.settings import get_settings  # noqa: E402
from fervid.tables import Job  # noqa: E402
from worker import record_store  # noqa: E402
from worker.media.plan import MediaInfo  # noqa: E402
from worker.records import FaceRecord, FrameRecord, ModelInfo  # noqa: E402

ADMIN_URL = os.environ.get("FERVID_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MEDIA = MediaInfo(kind="video", width=1920, height=1080, fps=30.0, duration_ms=0.0, frame_count=0, rotation=0)
MODEL = ModelInfo(name="bench", version="0", backend="none", precision="fp32", detector="none")


def admin_connection() -> psycopg.Connection[Any]:
    admin = make_url(ADMIN_URL)
    return psycopg.connect(host=admin.host, port=admin.port, user=admin.username, password=admin.password,
                           dbname=admin.database, autocommit=True, connect_timeout=5)


def create_database() -> str:
    name = f"fervid_bench_{uuid.uuid4().hex[:10]}"
    with admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    engine_for(url).dispose()
    with admin_connection() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


Plan = list[PlannedFrame]


def synthetic_job(segments: int, frames: int, faces: int) -> tuple[list[Plan], list[list[FrameRecord]]]:
    """Plans and results: `faces` people side by side on every frame, sampled every 200 ms."""
    plans, results = [], []
    for segment in range(segments):
        plan, records = [], []
        for step in range(frames):
            sample = segment * frames + step
            plan.append(PlannedFrame(frame_index=sample * 6, timestamp_ms=sample * 200.0, pts=sample * 3000,
                                     keyframe_pts=0))
            people = [FaceRecord(face_index=k, local_track=k,
                                              box=(100 + 300 * k, 200 + step % 7, 120, 120),
                                              score=0.97, probs=[(k + e + step % 5 + 1) / 100.0 for e in range(7)])
                      for k in range(faces)]
            records.append(FrameRecord(sample * 6, sample * 200.0, people))
        plans.append(plan)
        results.append(records)
    return plans, results


def new_job(plans: list[Plan]) -> str:
    job_id = str(uuid.uuid4())
    with session_scope() as session:
        session.add(Job(id=job_id, tenant="bench", status=JobStatus.queued, source_uri="file:///bench.mp4",
                        sample_fps=5.0, warnings=[], created_at=datetime.now(UTC)))
    lifecycle.claim_prepare(job_id, "bench", retrying=False, max_attempts=3, stale_after_s=60)
    record_store.start_job(job_id, "bench", MEDIA, plans, MODEL)
    for index in range(len(plans)):
        lifecycle.claim_segment(job_id, index, "bench", "bench", retrying=False, max_attempts=3, stale_after_s=60)
    return job_id


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def store_all(job_id: str, results: list[list[FrameRecord]]) -> None:
    for index, records in enumerate(results):
        if not record_store.store_segment(job_id, index, "bench", records, []):
            raise RuntimeError(f"segment {index} of the bench job was not stored")


def copy_all(url: str, results: list[list[FrameRecord]], job_id: str | None = None,
             tables: tuple[str, str] = ("scratch_frames", "scratch_faces")) -> None:
    """The baseline: the same rows, one transaction and two COPYs per segment, nothing else."""
    job_id = job_id or str(uuid.uuid4())
    parsed = make_url(url)
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password,
                         dbname=parsed.database) as connection, connection.cursor() as cursor:
        for index, records in enumerate(results):
            frame_rows: list[tuple[Any, ...]] = [(job_id, r.frame_index, r.timestamp_ms, index) for r in records]
            face_rows: list[tuple[Any, ...]] = [
                (job_id, r.frame_index, f.face_index, index, f.local_track, -1 - f.local_track, *f.box, f.score,
                 *f.probs) for r in records for f in r.faces]
            with cursor.copy(f"COPY {tables[0]} ({', '.join(record_store.FRAME_COLUMNS)}) FROM STDIN") as copy:
                for row in frame_rows:
                    copy.write_row(row)
            with cursor.copy(f"COPY {tables[1]} ({', '.join(record_store.FACE_COLUMNS)}) FROM STDIN") as copy:
                for row in face_rows:
                    copy.write_row(row)
            connection.commit()


def keyset_read(job_id: str, page: int) -> int:
    """The timeline pattern: pages of frames after a cursor, each with its faces; returns the rows read."""
    rows, after = 0, -1
    with engine_for(get_settings().database_url).connect() as connection:
        while True:
            frames = connection.execute(text(
                "SELECT frame_index, timestamp_ms FROM frames WHERE job_id = :job AND frame_index > :after "
                "ORDER BY frame_index LIMIT :page"), {"job": job_id, "after": after, "page": page}).all()
            if not frames:
                return rows
            faces = connection.execute(text(
                f"SELECT frame_index, face_index, track_id, x, y, w, h, score, {', '.join(EMOTIONS)} FROM faces "
                "WHERE job_id = :job AND frame_index BETWEEN :first AND :last ORDER BY frame_index, face_index"),
                {"job": job_id, "first": frames[0][0], "last": frames[-1][0]}).all()
            rows += len(frames) + len(faces)
            after = frames[-1][0]


def full_read(job_id: str) -> int:
    with engine_for(get_settings().database_url).connect() as connection:
        frames = connection.execute(text("SELECT frame_index, timestamp_ms FROM frames WHERE job_id = :job "
                                         "ORDER BY frame_index"), {"job": job_id}).all()
        faces = connection.execute(text(
            f"SELECT frame_index, face_index, track_id, x, y, w, h, score, {', '.join(EMOTIONS)} FROM faces "
            "WHERE job_id = :job ORDER BY frame_index, face_index"), {"job": job_id}).all()
    return len(frames) + len(faces)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--frames", type=int, default=150, help="sampled frames per segment")
    parser.add_argument("--faces", type=int, default=2, help="faces per frame")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported")
    args = parser.parse_args()
    try:
        url = create_database()
    except psycopg.OperationalError as error:
        print(f"bench/store_bench.py: PostgreSQL not reachable at {ADMIN_URL} ({error}); skipped")
        return 0
    os.environ["FERVID_DATABASE_URL"] = url
    get_settings.cache_clear()
    try:
        upgrade(url)
        with engine_for(url).begin() as connection:
            connection.execute(text("CREATE TABLE scratch_frames (LIKE frames INCLUDING ALL)"))
            connection.execute(text("CREATE TABLE scratch_faces (LIKE faces INCLUDING ALL)"))
        plans, results = synthetic_job(args.segments, args.frames, args.faces)
        rows = sum(len(records) + sum(len(r.faces) for r in records) for records in results)
        first_write: list[float] = []
        rewrite: list[float] = []
        baseline: list[float] = []
        with_keys: list[float] = []
        for _ in range(args.repeat):
            job_id = new_job(plans)
            first_write.append(timed(partial(store_all, job_id, results)))
            rewrite.append(timed(partial(store_all, job_id, results)))
            baseline.append(timed(partial(copy_all, url, results)))
            with_keys.append(timed(partial(copy_all, url, results, new_job(plans), ("frames", "faces"))))
        print(f"store: {args.segments} segments x {args.frames} frames x {args.faces} faces = {rows} rows per run, "
              f"best of {args.repeat}, PostgreSQL {engine_for(url).dialect.server_version_info}")
        print(f"  raw COPY baseline        {rows / min(baseline):10,.0f} rows/s   (scratch tables: no foreign keys)")
        print(f"  raw COPY, real tables    {rows / min(with_keys):10,.0f} rows/s   "
              f"time / baseline {min(with_keys) / min(baseline):.2f} (the schema's foreign-key checks)")
        print(f"  store_segment, new       {rows / min(first_write):10,.0f} rows/s   "
              f"time / baseline {min(first_write) / min(baseline):.2f}")
        print(f"  store_segment, rewrite   {rows / min(rewrite):10,.0f} rows/s   "
              f"time / baseline {min(rewrite) / min(baseline):.2f}")
        assert record_store.finish_job_if_complete(job_id)
        unpaged = min(timed(partial(full_read, job_id)) for _ in range(args.repeat))
        print(f"timeline read of one job ({rows} rows), best of {args.repeat}")
        print(f"  unpaged baseline         {rows / unpaged:10,.0f} rows/s")
        for page in (100, 1000):
            paged = min(timed(partial(keyset_read, job_id, page)) for _ in range(args.repeat))
            print(f"  keyset pages of {page:<5}   {rows / paged:10,.0f} rows/s   time / baseline {paged / unpaged:.2f}")
    finally:
        drop_database(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
