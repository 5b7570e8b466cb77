"""Every setting, read once from FERVID_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fervid.sources import SourceFence, parse_locations

if TYPE_CHECKING:
    from fervid.tables import Job

DATA_DIR = Path(platformdirs.user_data_dir("fervid"))
CACHE_DIR = Path(platformdirs.user_cache_dir("fervid"))


class TenantQuota(NamedTuple):
    """What one tenant may hold at once; a submission past any of them is a 429."""

    max_active_jobs: int
    max_stored_bytes: int
    max_frames_per_day: int


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERVID_", extra="ignore")

    database_url: str = f"sqlite:///{DATA_DIR / 'fervid.db'}"
    broker_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = f"file://{DATA_DIR / 'media'}"
    api_keys: str = ""  # "tenant:key,tenant2:sha256:<hex of the key's SHA-256>"
    api_keys_file: Path | None = None  # more entries, one a line; re-read when it changes (rotation, no restart)
    allow_weak_api_keys: bool = False  # development and tests only: short or low-entropy keys are refused otherwise
    max_upload_mb: int = 2048
    max_pixels: int = 40_000_000  # per decoded frame: refuses decompression bombs before decoding
    # Frames x pixels per frame a job's media may make its workers decode, checked before decoding: 6 h of 1080p
    # at 90 fps fits; a many-frame animation of huge frames does not.
    max_decoded_pixels: int = 5_000_000_000_000
    max_duration_s: float = 6 * 3600
    max_frames: int = 2_000_000  # video frames (packets) in one file: 6 h at 90 fps
    # Memory one decoder process (a probe, or a segment's decoding, each in a process of its own) may allocate;
    # past it the job fails media_too_large. 8K HEVC with its reference frames and frame threads fits.
    decode_memory_mb: Annotated[int, Field(ge=64)] = 4096
    max_download_mb: int = 4096  # for http(s) source URIs
    # An http(s) source must arrive whole within this, and keep at least the minimum rate once 30 s have passed,
    # so a source dripping a byte every few seconds cannot hold a worker.
    download_deadline_s: Annotated[float, Field(gt=0.0)] = 1500.0
    download_min_rate_kbps: Annotated[float, Field(ge=0.0)] = 512.0  # KiB/s
    download_cache_dir: Path = CACHE_DIR / "downloads"  # remote media kept while a worker processes its segments
    download_cache_mb: int = 20480
    # Finished jobs (rows, results and uploaded media) are deleted this many days after they end; faces are
    # biometric data. None: kept until their tenant deletes them.
    retention_days: Annotated[float, Field(gt=0)] | None = None
    # Folders that file:// source URIs submitted through the API may name (e.g. a shared mount), comma-separated.
    # `{tenant}` as a whole segment stands for the job's tenant: /mnt/media/{tenant} gives each tenant its own
    # folder. An entry without it is open to every tenant. Empty: file:// is refused, so no tenant can make a worker
    # read its local files. The folders and those above them must be writable by the operator only.
    file_uri_roots: str = ""
    # Where s3:// source URIs submitted through the API may point (s3://bucket or s3://bucket/prefix, comma-
    # separated, `{tenant}` as above: s3://media/{tenant}); workers read them with their own credentials.
    # Empty: s3:// sources are refused.
    s3_source_prefixes: str = ""
    # http(s) sources and webhooks may reach loopback/private addresses only when this is set (development).
    allow_private_urls: bool = False
    segment_seconds: Annotated[float, Field(ge=1.0)] = 30.0  # long videos split into segments that workers share
    backend: str = "auto"  # auto | tensorrt | ort-cuda | ort-cpu | torch-cuda
    # TensorRT engines' precision; int8 needs a model from `fervid quantize --target tensorrt`.
    tensorrt_precision: Literal["fp16", "fp32", "int8"] = "fp16"
    model_path: Path | None = None  # default: the ONNX shipped under models/
    detector_path: Path | None = None  # YuNet ONNX; default: the model cache, downloaded there on first use
    # Where workers download YuNet from on first use (sha256-checked); empty: never download (air-gapped sites), so
    # without FERVID_DETECTOR_PATH or a cached copy they run the Haar cascade, and say so.
    detector_url: str = (
        "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
    )
    model_cache_dir: Path = CACHE_DIR / "models"
    engine_cache_dir: Path = CACHE_DIR / "engines"
    queue: str = "cpu"  # the Celery queue jobs are routed to (cpu | gpu)
    # Prepare and segment tasks of one tenant sent to a queue and not finished, at most; the rest wait in the
    # database and are sent as these finish, so another tenant's work waits behind this many, not a whole backlog.
    # About the worker processes on the queue: a tenant alone can use that many.
    tasks_per_tenant: Annotated[int, Field(ge=1)] = 16
    classify_batch: int = 64  # faces per classifier call, gathered across frames
    # Faces analysed per frame: a crowd keeps its largest faces (the job says so), so one video cannot make rows
    # (and the API's pages, summaries and exports) explode.
    max_faces_per_frame: Annotated[int, Field(ge=1)] = 32
    inference_threads: int = 0  # the classifier's threads per worker process (ONNX Runtime); 0: the runtime's own
    # The face detector runs on a sampled frame once this many ms have passed since the last frame it ran on; the
    # faces of the frames between are carried by tracking (straight-line motion between the two detected frames
    # around them). 0: every sampled frame is detected. At 100 ms (every third frame of a 30 fps job; every frame at
    # 10 fps or less) bench/detect_interval.py measured 99.1 % of the boxes kept, the emotions of all of them kept,
    # and the analysis 2.2x as fast.
    detect_interval_ms: Annotated[float, Field(ge=0.0, le=1000.0)] = 100.0
    stale_after_s: float = 60.0  # a running segment with no heartbeat for this long is requeued
    requeue_after_s: float = 300.0  # a queued segment not started for this long is re-sent (lost message)
    reaper_interval_s: float = 15.0
    # A job's prepare and each of its segments get this many deliveries; past them the job fails processing_failed
    # (a file that kills or stalls every worker it reaches must not be redelivered forever).
    max_attempts: Annotated[int, Field(ge=1)] = 3
    # Celery time limits in seconds; 0: scaled to FERVID_SEGMENT_SECONDS (segments) or the download limit (prepare).
    # Past the soft limit the job fails processing_failed; past the hard one (soft + 60 s) the worker process is
    # killed and the delivery counts as one attempt.
    segment_time_limit_s: Annotated[float, Field(ge=0.0)] = 0.0
    prepare_time_limit_s: Annotated[float, Field(ge=0.0)] = 0.0
    webhook_timeout_s: float = 5.0  # per read
    webhook_deadline_s: Annotated[float, Field(gt=0.0)] = 15.0  # per attempt, the whole exchange
    # Sign webhooks (X-Fervid-Signature) with keys per tenant derived from these: "kid:secret,kid:secret", the first
    # signs and each one listed adds a signature (rotation); empty: unsigned.
    webhook_secrets: str = ""
    webhook_secret: str = ""  # the single secret of before, signing as kid v1; set one of the two
    # Signs media links (api/media_links.py); empty: a secret the API processes create and share in Redis.
    media_link_secret: str = ""
    # Redis holding the API processes' shared rate-limit counters; empty: FERVID_BROKER_URL.
    limits_url: str = ""
    requests_per_minute: int = 1200  # per API key
    failed_auth_per_minute: int = 120  # per client address; past it the address gets 429 even with a valid key
    max_active_jobs: int = 200  # queued and running jobs per tenant: one tenant's backlog cannot fill the queue
    max_stored_mb: int = 100 * 1024  # uploaded media kept per tenant
    max_frames_per_day: int = 5_000_000  # sampled frames of the jobs a tenant submitted in the last 24 h
    # What a submission that declares no max_duration_s reserves of those until it is prepared (x its sample_fps):
    # longer media then takes the rest at prepare if the day has room, else fails quota_exceeded.
    reserved_duration_s: Annotated[float, Field(gt=0)] = 600.0

    def tenant_quota(self) -> TenantQuota:
        return TenantQuota(self.max_active_jobs, self.max_stored_mb << 20, self.max_frames_per_day)

    def source_fence(self, tenant: str) -> SourceFence:
        """The locations the tenant's sources may lie in (FERVID_FILE_URI_ROOTS, FERVID_S3_SOURCE_PREFIXES)."""
        return SourceFence.for_tenant(tenant, self.file_uri_roots, self.s3_source_prefixes, self.storage_url)

    def job_source_fence(self, job: Job) -> SourceFence | None:
        """The fence of the job's source: its tenant's, unless the source is the job's own upload (the store's URI,
        written by the API), which no fence holds."""
        return None if job.stored_media_key else self.source_fence(job.tenant)
    # GET /metrics (Prometheus) answers only with this bearer token; empty: metrics are off.
    metrics_token: str = ""

    def segment_soft_limit_s(self) -> float:
        # CPU inference runs a few sampled frames a second: 60 s per second of segment is far past any healthy run.
        return self.segment_time_limit_s or 120.0 + 60.0 * self.segment_seconds

    def prepare_soft_limit_s(self) -> float:
        # The download (at the minimum rate a source must keep) and the probe.
        return self.prepare_time_limit_s or 1800.0

    @field_validator("file_uri_roots")
    @classmethod
    def _file_uri_roots(cls, value: str) -> str:
        parse_locations(value, "FERVID_FILE_URI_ROOTS", "file")
        return value

    @field_validator("s3_source_prefixes")
    @classmethod
    def _s3_source_prefixes(cls, value: str) -> str:
        parse_locations(value, "FERVID_S3_SOURCE_PREFIXES", "s3")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
