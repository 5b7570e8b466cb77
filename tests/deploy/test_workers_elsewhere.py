"""Workers on another host: two compose projects on this machine that share only a network, as two hosts share a
LAN. The first runs docker-compose.yml with no worker and S3 storage (moto's server in a container); the second runs
docker-compose.workers.yml, told the first's addresses. Jobs submitted to the first are processed by the second."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tests.deploy.conftest import Api, Compose, api_key, wait_until

pytestmark = pytest.mark.deploy

S3_IMAGE = "fervid-test-s3:latest"
S3_DOCKERFILE = """FROM python:3.11-slim
RUN pip install --no-cache-dir 'moto[server]>=5'
CMD ["moto_server", "-H", "0.0.0.0", "-p", "5000"]
"""
S3_ENV = {"AWS_ACCESS_KEY_ID": "fervid-test", "AWS_SECRET_ACCESS_KEY": "fervid-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://core-s3:5000",
          "FERVID_STORAGE_URL": "s3://media/uploads"}

# The core host: its PostgreSQL, Redis and S3 server reachable on the shared network under names of their own (as a
# LAN's host names), the API on a port of its own.
CORE_OVERRIDE = """services:
  s3:
    image: {s3_image}
    ports: ["127.0.0.1::5000"]
    networks: {{default: {{}}, shared: {{aliases: [core-s3]}}}}
  postgres:
    networks: {{default: {{}}, shared: {{aliases: [core-postgres]}}}}
  redis:
    networks: {{default: {{}}, shared: {{aliases: [core-redis]}}}}
  migrate:
    networks: [default, shared]
  api:
    ports: !override ["127.0.0.1::8000"]
    networks: [default, shared]
networks:
  shared: {{external: true, name: {network}}}
"""
WORKERS_OVERRIDE = """services:
  worker:
    networks: [shared]
networks:
  shared: {{external: true, name: {network}}}
"""


@pytest.fixture(scope="module")
def s3_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("s3-image")
    (context / "Dockerfile").write_text(S3_DOCKERFILE)
    subprocess.run(["docker", "build", "-q", "-t", S3_IMAGE, str(context)], check=True, capture_output=True,
                   timeout=900)
    return S3_IMAGE


@pytest.fixture(scope="module")
def two_hosts(built_images: Path, s3_image: str) -> Iterator[tuple[Compose, Compose, Api]]:
    network = f"fervid-lan-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    (built_images / "core.override.yml").write_text(CORE_OVERRIDE.format(s3_image=s3_image, network=network))
    (built_images / "workers.override.yml").write_text(WORKERS_OVERRIDE.format(network=network))
    key = api_key()
    core = Compose(built_images, f"{network}-core", ["docker-compose.yml", "core.override.yml"],
                   {"FERVID_API_KEYS": key, **S3_ENV})
    workers = Compose(built_images, f"{network}-workers", ["docker-compose.workers.yml", "workers.override.yml"],
                      {"FERVID_DATABASE_URL": "postgresql+psycopg://fervid:fervid@core-postgres:5432/fervid",
                       "FERVID_BROKER_URL": "redis://core-redis:6379/0", **S3_ENV})
    try:
        core.run("up", "-d", "--scale", "worker=0", timeout=600)
        import boto3

        s3_port = core.run("port", "s3", "5000").stdout.strip()
        boto3.client("s3", endpoint_url=f"http://{s3_port}", region_name="us-east-1",
                     aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket="media")
        workers.run("up", "-d", "--scale", "worker=2", timeout=600)
        api = Api(f"http://{core.run('port', 'api', '8000').stdout.strip()}", key.partition(":")[2])
        wait_until(lambda: api.request("GET", "/healthz")[0] == 200, 120, core.logs)
        yield core, workers, api
    finally:
        workers.down()
        core.down()
        subprocess.run(["docker", "network", "rm", network], capture_output=True)


def test_jobs_submitted_on_the_core_host_are_processed_by_workers_of_another(
        two_hosts: tuple[Compose, Compose, Api]) -> None:
    # given a core host without workers, and two workers on "another host"
    core, workers, api = two_hosts
    assert core.containers("worker") == [] and len(workers.containers("worker")) == 2

    # when uploads are submitted to the core host's API (stored in S3)
    jobs = [api.upload(SHARED / "media" / name, sample_fps="4") for name in ("single_face.mp4", "single_face.jpg")]

    # then the other host's workers process them from S3, and the core host's /readyz lists them
    for job_id in jobs:
        job = api.wait_finished(job_id, 240, lambda: workers.logs() + core.logs())
        assert job["status"] == "succeeded", job
    ready = api.json("/readyz")
    worker_hosts = {name.partition(":")[0] for name in (w["name"] for w in ready["workers"])}
    assert worker_hosts == {container[:12] for container in workers.containers("worker")}, ready
