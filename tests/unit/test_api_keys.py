"""API keys: weak and published keys refused at start-up, SHA-256 entries, rotation through a file without a
restart, and keys kept out of the workers' environment in docker-compose.yml."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest
import yaml

from fervid.api_keys import KeyRing, KeySource, WeakKeyError

ROOT = Path(__file__).resolve().parents[2]
STRONG = secrets.token_urlsafe(32)


@pytest.mark.parametrize("key", ["change-me", "alice-key", "a" * 40, "0123456789" * 2, "abababababababababababab"])
def test_weak_and_published_keys_are_refused(key: str) -> None:
    with pytest.raises(WeakKeyError, match="secrets.token_urlsafe"):
        KeyRing.parse(f"demo:{key}")


def test_the_published_default_is_refused_even_where_weak_keys_are_allowed() -> None:
    with pytest.raises(WeakKeyError, match="published"):
        KeyRing.parse("demo:change-me", allow_weak=True)


def test_a_key_can_be_given_as_its_sha256() -> None:
    # given the digest of a key, and a plain entry
    digest = hashlib.sha256(STRONG.encode()).hexdigest()
    other = secrets.token_urlsafe(32)
    ring = KeyRing.parse(f"alice:sha256:{digest},bob:{other}")
    # when / then the key itself opens alice's tenant; the digest is not a key
    assert ring.tenant_for(STRONG) == "alice"
    assert ring.tenant_for(other) == "bob"
    assert ring.tenant_for(digest) is None and ring.tenant_for(f"sha256:{digest}") is None


def test_the_api_does_not_start_with_a_weak_key(fervid_env: pytest.MonkeyPatch) -> None:
    from api.app import create_app

    fervid_env.setenv("FERVID_ALLOW_WEAK_API_KEYS", "false")
    fervid_env.setenv("FERVID_API_KEYS", "demo:change-me")
    with pytest.raises(WeakKeyError, match="demo"):
        create_app()


def test_keys_rotate_through_the_file_without_a_restart(tmp_path: Path) -> None:
    # given a key file with alice's old key
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    path = tmp_path / "keys"
    path.write_text(f"alice:{old}\n")
    source = KeySource("", path)
    assert source.current().tenant_for(old) == "alice"
    # when the file is rewritten with her new key
    path.write_text(f"alice:{new}\n")
    os.utime(path, ns=(1, 10**18))  # a changed mtime even on a coarse clock
    # then the next request sees the new key only
    assert source.current().tenant_for(new) == "alice"
    assert source.current().tenant_for(old) is None
    # and a rewrite that names a weak key is refused, the keys before stay in force
    path.write_text("alice:weak\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert source.current().tenant_for(new) == "alice"


def test_a_rewrite_within_one_mtime_tick_is_never_missed_and_an_empty_file_keeps_the_keys(tmp_path: Path) -> None:
    # given a key file with alice's key, its mtime pinned (a coarse clock: every write below lands in one tick)
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    path = tmp_path / "keys"
    path.write_text(f"alice:{old}\n")
    os.utime(path, ns=(1, 10**18))
    source = KeySource("", path)
    # when an editor truncates the file (the first half of a rewrite) and a request comes in between
    path.write_text("")
    os.utime(path, ns=(1, 10**18))
    between = source.current().tenant_for(old)
    # and then writes the new key, still within the same tick
    path.write_text(f"alice:{new}\n")
    os.utime(path, ns=(1, 10**18))
    # then the empty file changed nothing, and the new key is seen at once
    assert between == "alice"
    assert source.current().tenant_for(new) == "alice" and source.current().tenant_for(old) is None


def test_only_the_api_service_gets_keys_and_there_is_no_default() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    holders = {name for name, service in compose["services"].items()
               if "FERVID_API_KEYS" in (service.get("environment") or {})}
    assert holders == {"api"}
    assert ":?" in compose["services"]["api"]["environment"]["FERVID_API_KEYS"]
