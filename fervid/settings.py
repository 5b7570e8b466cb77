"""Every setting, read once from FERVID_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fervid.sources import SourceFence, parse_locations

if TYPE_CHECKING:
    from fervid.tables import Job

DATA_DIR = Path(platformdirs.user_data_dir("fervid"))
CACHE_DIR = Path(platformdirs.user_cache_dir("fervid"))


def shown(default: str) -> dict[str, Any]:
    """A field's default as docs/configuration.md shows it, where the value itself depends on the machine."""
    return {"shown_default": default}


class TenantQuota(NamedTuple):
    """What one tenant may hold at once; a submission past any of them is a 429."""

    max_active_jobs: int
    max_stored_bytes: int
    max_frames_per_day: int


class Settings(BaseSettings):
    """Each field is the environment variable FERVID_<NAME>; its description is its row in docs/configuration.md
    (written by `fervid config-docs`). `shown_default` stands in for a default that depends on the machine."""

    model_config = SettingsConfigDict(env_prefix="FERVID_", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DATA_DIR / 'fervid.db'}",
        json_schema_extra=shown("SQLite file `fervid.db` in the user data dir"),
        description="`postgresql+psycopg://user:pass@host/db` in service; the SQLite default suits `fervid analyze`")
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description=(
        "Celery broker: Redis (`redis://`, `rediss://`) or RabbitMQ (`amqp://`), both tested"))
    storage_url: str = Field(
        default=f"file://{DATA_DIR / 'media'}", json_schema_extra=shown("`file://<user data dir>/media`"),
        description="where uploads are stored: `file:///dir` or `s3://bucket/prefix` (any S3-compatible store; "
                    "credentials and endpoint from the `AWS_*` variables, `AWS_ENDPOINT_URL`)")
    api_keys: str = Field(default="", description=(
        "`tenant:key,tenant2:sha256:<hex SHA-256 of the key>` (a tenant is 1 to 64 letters, digits, `.`, `_`, `-`, "
        "starting with a letter or digit); the API refuses to start on a short or low-entropy key (at least 20 "
        "characters, about 80 bits) or the old compose default; only the API service needs it"))
    api_keys_file: Path | None = Field(default=None, description=(
        "more entries, one a line, re-read when its mtime changes: rotate keys without a restart (a file that no "
        "longer parses is logged, the keys before stay)"))
    allow_weak_api_keys: bool = Field(default=False, description=(
        "development and tests only: accept short or low-entropy API keys and webhook secrets, which are refused at "
        "start-up otherwise"))
    max_upload_mb: int = Field(default=2048, description="larger uploads get 413")
    max_pixels: int = Field(default=40_000_000, description=(
        "frames with more pixels are refused before decoding (`media_too_large`): decompression bombs are refused "
        "from the header"))
    max_decoded_pixels: int = Field(default=5_000_000_000_000, description=(
        "frames x pixels per frame one file may make workers decode; over it the job fails `media_too_large` before "
        "decoding. 6 h of 1080p at 90 fps fits; a many-frame animation of huge frames does not"))
    max_duration_s: float = Field(default=6 * 3600, description="longer media is refused")
    max_frames: int = Field(default=2_000_000, description=(
        "a video with more frames (packets) is refused (6 h at 90 fps; headers can understate length)"))
    decode_memory_mb: Annotated[int, Field(ge=64, description=(
        "memory one decoder process (a probe, or one segment's decoding, each in a process of its own) may allocate "
        "beyond what it was forked with; past it the job fails `media_too_large`. 8K HEVC with its reference frames "
        "fits (decoders run on one thread)"))] = 4096
    max_download_mb: int = Field(default=4096, description=(
        "an http(s) source larger than this is refused (`media_too_large`) as it arrives"))
    download_deadline_s: Annotated[float, Field(gt=0.0, description=(
        "an http(s) source must arrive whole within this many seconds, else the job fails `source_unavailable`"
        ))] = 1500.0
    download_min_rate_kbps: Annotated[float, Field(ge=0.0, description=(
        "the rate in KiB/s an http(s) source must keep once 30 s have passed, else `source_unavailable`: a source "
        "dripping a byte every few seconds cannot hold a worker"))] = 512.0
    download_cache_dir: Path = Field(
        default=CACHE_DIR / "downloads", json_schema_extra=shown("`downloads` in the user cache dir"),
        description="s3 and http(s) media kept while a worker processes a job's segments (and the API's viewer "
                    "copies of remote media)")
    download_cache_mb: int = Field(default=20480, description="the download cache's size")
    retention_days: Annotated[float, Field(gt=0)] | None = Field(
        default=None, json_schema_extra=shown("off"), description=(
        "finished jobs (rows, results, uploaded media) are deleted this many days after they end, by every worker's "
        "reaper, with a `job.expired` row in `audit_events` (faces are biometric data); each worker's reaper also "
        "drops its download-cache copies of jobs that are gone (deleted or expired). Off: kept until their tenant "
        "deletes them"))
    file_uri_roots: str = Field(default="", description=(
        "folders that `file://` sources submitted through the API may name, comma-separated (none: `file://` "
        "refused, so no tenant can make a worker read its local files). `{tenant}` as a whole segment is the "
        "submitting tenant: `/mnt/media/{tenant}` gives each tenant its own folder; an entry without it is open to "
        "every tenant (the API logs a warning). Workers (and the viewer) check again when they open the file, "
        "through one held descriptor, so a symlink swapped in later reads nothing; keep the folders and those above "
        "them writable by the operator only"))
    s3_source_prefixes: str = Field(default="", description=(
        "`s3://bucket[/prefix]` locations that `s3://` sources submitted through the API may name, comma-separated, "
        "`{tenant}` as above (`s3://media/{tenant}`); workers read them with their own credentials (none: `s3://` "
        "refused). The upload store itself is never a source. A source outside, missing or not a regular file is "
        "one answer, `source_not_allowed`, so no tenant learns which paths exist"))
    allow_private_urls: bool = Field(default=False, description=(
        "let http(s) sources and webhooks reach loopback/private addresses (development; otherwise refused as "
        "`source_not_allowed` / not sent). Either way only http(s) is followed, redirects included; NAT64 "
        "(`64:ff9b::/96`, `64:ff9b:1::/48`) and 6to4 (`2002::/16`) count as private, and each connection goes to "
        "the addresses it checked (no DNS rebinding)"))
    segment_seconds: Annotated[float, Field(ge=1.0, description=(
        "long videos are split into segments of this many seconds, independent tasks that workers share"))] = 30.0
    backend: str = Field(default="auto", description=(
        "the classifier's inference backend: `auto` = TensorRT -> ONNX Runtime CUDA -> ONNX Runtime CPU; or "
        "`tensorrt`, `ort-cuda`, `ort-cpu`, `torch-cuda` ([gpu.md](gpu.md))"))
    tensorrt_precision: Literal["fp16", "fp32", "int8"] = Field(default="fp16", description=(
        "TensorRT engines' precision: `fp16`, `fp32`, or `int8` with a model from `fervid quantize --target "
        "tensorrt` ([gpu.md](gpu.md))"))
    model_path: Path | None = Field(default=None, json_schema_extra=shown("the shipped `models/fervid-emotion.onnx`"),
                                    description="the emotion classifier's ONNX file")
    detector_path: Path | None = Field(default=None, json_schema_extra=shown("YuNet in `FERVID_MODEL_CACHE_DIR`"),
                                       description="the face detector's (YuNet's) ONNX file; default: the copy in the "
                                                   "model cache, downloaded there on first use")
    detector_url: str = Field(
        default="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        description="where YuNet is downloaded from on first use (sha256-checked); empty: never download (air-gapped "
                    "sites: mount the file or set `FERVID_DETECTOR_PATH`), so without a path or a cached copy workers "
                    "run the Haar cascade, and say so")
    model_cache_dir: Path = Field(
        default=CACHE_DIR / "models", json_schema_extra=shown("`models` in the user cache dir"),
        description="downloaded detectors (`fervid models fetch` fills it ahead of time)")
    engine_cache_dir: Path = Field(
        default=CACHE_DIR / "engines", json_schema_extra=shown("`engines` in the user cache dir"),
        description="TensorRT engines, built once per model, GPU and profile ([gpu.md](gpu.md))")
    queue: str = Field(default="cpu", description=(
        "the Celery queue jobs are sent to and workers read (e.g. `cpu`, `gpu`)"))
    tasks_per_tenant: Annotated[int, Field(ge=1, description=(
        "a tenant's prepare and segment tasks sent to a queue and not finished, at most; the rest wait in the "
        "database and go out, its oldest job's first, as those finish, so another tenant's work waits behind this "
        "many, not a whole backlog. Set it alike on the API and the workers; about the worker processes on the "
        "queue, since a tenant alone uses at most this many"))] = 16
    classify_batch: int = Field(default=64, description="faces per classifier call, gathered across frames")
    max_faces_per_frame: Annotated[int, Field(ge=1, description=(
        "faces analysed per frame: a crowd keeps its largest, and the job gets a warning saying so (one video cannot "
        "make rows, pages, summaries and exports explode)"))] = 32
    inference_threads: int = Field(
        default=0, json_schema_extra=shown("usable cores / worker processes less one (at least 1)"), description=(
        "the classifier's threads per worker process (ONNX Runtime); set to 0, the runtime's own choice. The "
        "detector and the decoder run beside it on the remaining core, overlapped, and when the classifier's thread "
        "has two batches queued the pipeline thread classifies the next one itself (ONNX Runtime on the CPU takes a "
        "second caller): on 2 cores a classifier on both made `fervid analyze` slower (4.27 s against 3.83 s, "
        "`bench/peer_fer.py`). Usable cores are the CPU affinity (`taskset`, a container's CPU set), not the "
        "machine's; `fervid analyze` takes the same share"))
    detect_interval_ms: Annotated[float, Field(ge=0.0, le=1000.0, description=(
        "the face detector runs on a sampled frame once this long has passed since the last one it ran on (and on "
        "the last frame); faces of the frames between move in a straight line between the detected frames around "
        "them. 0: every sampled frame. At 100 ms (every third frame of a 30 fps job; every frame at 10 fps or less) "
        "on the shared 26-30 fps clips: 99.1 % of the boxes, every matched face's top-1 emotion and every track's "
        "majority emotion kept, the analysis 2.2x as fast (`bench/detect_interval.py`)"))] = 100.0
    detect_max_side: Annotated[int, Field(ge=320, le=8192, description=(
        "frames go to the face detector at most this many pixels on their longer side, never shrunk further. At "
        "1280, every real face YuNet finds at full size from 28 px up is found in frames up to 720p; 1080p frames are "
        "shrunk, so their faces under about 45 px are found less often (recall 79.8 % against 81.9 % at full size on "
        "the real-footage set, `bench/detect_recall.py`). 1920 keeps 1080p whole: a 1080p job at 5 fps then takes "
        "about 1.4x as long (`bench/detect_max_side.py`; the model card, \"The detector at a size that keeps "
        "faces\")"))] = 1280
    stale_after_s: float = Field(default=60.0, description=(
        "a running prepare or segment with no heartbeat for this long is taken over by the reaper; `/readyz` lists "
        "the workers that reported within it"))
    requeue_after_s: float = Field(default=300.0, description=(
        "queued work not started for this long is re-sent (a lost message, e.g. Redis restarted without "
        "persistence), and a webhook owed this long is sent again"))
    reaper_interval_s: float = Field(default=15.0, description=(
        "how often each worker's reaper looks for stale segments, lost messages, expired jobs and stale "
        "download-cache copies, and publishes its status row"))
    max_attempts: Annotated[int, Field(ge=1, description=(
        "deliveries of a job's prepare and of each segment; then the job fails `processing_failed` (a file that "
        "kills or stalls every worker it reaches is not redelivered forever)"))] = 3
    segment_time_limit_s: float = Field(
        default=0.0, ge=0.0, json_schema_extra=shown("120 + 60 x `FERVID_SEGMENT_SECONDS`"), description=(
        "a segment task's soft time limit in seconds; past it the job fails `processing_failed`, and 60 s later (the "
        "hard limit) the pool kills the process and the delivery counts as one attempt. 0: the default"))
    prepare_time_limit_s: float = Field(default=0.0, ge=0.0, json_schema_extra=shown("1800"), description=(
        "a prepare task's (download and probe) soft time limit in seconds, as for segments. 0: the default"))
    webhook_timeout_s: float = Field(default=5.0, description="a webhook attempt's timeout per read")
    webhook_deadline_s: Annotated[float, Field(gt=0.0, description=(
        "a webhook attempt's total deadline, the whole exchange"))] = 15.0
    webhook_secrets: str = Field(default="", description=(
        "`kid:secret,kid:secret`: signs webhooks (`X-Fervid-Signature`) with keys per tenant derived from them, the "
        "first signing and each one listed adding a signature ([rotation](api.md#rotating-the-signing-secret)); weak "
        "secrets refused at start-up as for API keys (none: unsigned)"))
    webhook_secret: str = Field(default="", description=(
        "the single secret of earlier releases, kid `v1`; set this or `FERVID_WEBHOOK_SECRETS`, not both"))
    media_link_secret: str = Field(default="", description=(
        "signs media links (`POST /v1/jobs/{job_id}/media-link`) with a key per tenant derived from it and the "
        "tenant's API key, so the key configuration alone cannot mint links; none: a random secret the API "
        "processes create and share in Redis (`FERVID_LIMITS_URL`), or, with no Redis, one per process"))
    limits_url: str = Field(default="", json_schema_extra=shown("`FERVID_BROKER_URL`"), description=(
        "the Redis every API process counts rate limits in (fails open, logged, when it does not answer; with a "
        "RabbitMQ broker and no Redis here, no rate limits)"))
    metrics_token: str = Field(default="", description=(
        "turns on `GET /metrics` (Prometheus text) for scrapers sending it as a bearer token; none: metrics are off"))
    requests_per_minute: int = Field(default=1200, description=(
        "per API key; past it, 429 `rate_limited` with `Retry-After`"))
    failed_auth_per_minute: int = Field(default=120, description=(
        "failed authentications per client address; past it every request from there is 429 until the minute ends, "
        "even with a valid key. Behind a reverse proxy on another host, start `fervid api --forwarded-allow-ips <the "
        "proxy's address or network>` (or set uvicorn's `FORWARDED_ALLOW_IPS`) so that the client address is the "
        "one its `X-Forwarded-For` names; otherwise every client shares the proxy's address, and its limit"))
    max_active_jobs: int = Field(default=200, description=(
        "queued and running jobs per tenant; past it, 429 `quota_exceeded`. Quotas are checked under a lock per "
        "tenant (an advisory lock on PostgreSQL, the write lock on SQLite), so concurrent submissions cannot pass "
        "one together"))
    max_stored_mb: int = Field(default=100 * 1024, description=(
        "uploaded media kept per tenant; past it, 429 `quota_exceeded` until jobs are deleted. An upload is checked "
        "against the quotas from its `Content-Length` before its body is read"))
    max_frames_per_day: int = Field(default=5_000_000, description=(
        "sampled frames of a tenant's jobs submitted in the last 24 h, counted at submission: until it is prepared a "
        "job reserves `max_duration_s` x `sample_fps` frames (released if it fails or is cancelled first), then "
        "counts the frames it samples; a submission that does not fit is 429 (`Retry-After` 30 s while reservations "
        "may shrink, else until the oldest job is a day old). Media longer than its reservation takes the rest at "
        "prepare when the day has room, else fails `quota_exceeded`"))
    reserved_duration_s: Annotated[float, Field(gt=0, description=(
        "what a submission that declares no `max_duration_s` reserves of those frames until it is prepared, in "
        "seconds of media (x its `sample_fps`)"))] = 600.0

    def tenant_quota(self) -> TenantQuota:
        return TenantQuota(self.max_active_jobs, self.max_stored_mb << 20, self.max_frames_per_day)

    def source_fence(self, tenant: str) -> SourceFence:
        """The locations the tenant's sources may lie in (FERVID_FILE_URI_ROOTS, FERVID_S3_SOURCE_PREFIXES)."""
        return SourceFence.for_tenant(tenant, self.file_uri_roots, self.s3_source_prefixes, self.storage_url)

    def job_source_fence(self, job: Job) -> SourceFence | None:
        """The fence of the job's source: its tenant's, unless the source is the job's own upload (the store's URI,
        written by the API), which no fence holds."""
        return None if job.stored_media_key else self.source_fence(job.tenant)


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
