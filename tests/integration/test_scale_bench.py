"""`bench/scale_bench.py` still runs its jobs through the real service: `make bench` runs it, and a worker that
refuses its file:// sources (FERVID_FILE_URI_ROOTS) once broke it with nobody noticing. Its timings are not checked
here: they are the benchmark's, and a test never asserts times."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, ROOT


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux) for --pin")
def test_the_scale_benchmark_finishes_its_jobs_on_one_and_on_two_pinned_workers(
        shared_dir: Path, redis_url: str, empty_pg_url: str, tmp_path: Path) -> None:
    # given real Redis and PostgreSQL (empty_pg_url: reachable, else skipped; the bench makes its own database), and
    # the bench's workers on an empty model cache
    env = {**os.environ, "FERVID_TEST_REDIS_URL": redis_url, "FERVID_TEST_PG_URL": PG_ADMIN_URL,
           "FERVID_MODEL_CACHE_DIR": str(tmp_path / "model-cache")}

    # when the benchmark runs a short clip on one pinned worker process and then on two
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_bench.py"), "--pin", "--loops", "4",
                             "--fps", "2", "--segment-seconds", "4"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)

    # then both jobs succeeded (a failed job ends it with its error code) and it reports both times
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["1_workers_1_threads_s"] > 0 and report["2_workers_1_threads_s"] > 0
    assert report["sampled_frames"] == 19
