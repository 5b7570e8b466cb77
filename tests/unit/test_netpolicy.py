"""Tenants cannot point workers at the service's own network (http sources, webhooks) unless it is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fervid.errors import MediaError
from fervid.netpolicy import non_public_address
from fervid.settings import get_settings
from fervid.storage import local_copy
from tests.unit.test_storage import CountingServer


@pytest.fixture
def strict(fervid_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    fervid_env.setenv("FERVID_ALLOW_PRIVATE_URLS", "false")
    get_settings.cache_clear()
    return fervid_env


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://localhost/x", "http://10.1.2.3/x",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http:///nohost"])
def test_non_public_hosts_are_named(strict: pytest.MonkeyPatch, url: str) -> None:
    assert non_public_address(url) is not None


def test_public_addresses_and_the_development_switch_pass(strict: pytest.MonkeyPatch) -> None:
    assert non_public_address("http://93.184.216.34/clip.mp4") is None
    strict.setenv("FERVID_ALLOW_PRIVATE_URLS", "true")
    get_settings.cache_clear()
    assert non_public_address("http://127.0.0.1/clip.mp4") is None


def test_a_loopback_source_is_refused_before_any_request(strict: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # given a server on loopback
    server = CountingServer(b"x" * 10)
    try:
        # when a job names it as its source
        with pytest.raises(MediaError) as refused, local_copy(f"{server.base}/clip.mp4", cache_key="job"):
            pass
        # then it is refused with its own code and the server never saw a request
        assert refused.value.code == "source_not_allowed" and server.hits[0] == 0
    finally:
        server.server.shutdown()
