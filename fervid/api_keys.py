"""API keys: parsed from FERVID_API_KEYS and FERVID_API_KEYS_FILE, kept as SHA-256 digests, checked for strength.

An entry is `tenant:key` or `tenant:sha256:<64 hex>` (the digest of the key, so the operator's configuration need
not hold the key itself). The file is re-read when its mtime changes, so keys rotate without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fervid.sources import is_safe_tenant

log = logging.getLogger(__name__)

# The key docker-compose.yml used to default to: known to everyone who read the file.
PUBLISHED_KEYS = frozenset({"change-me"})
MIN_KEY_LENGTH = 20
MIN_KEY_BITS = 80.0  # length x the Shannon entropy of its characters
HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")


class WeakKeyError(ValueError):
    """A key that anyone could guess or that is published; the API refuses to start with it."""


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_bits(key: str) -> float:
    counts = Counter(key)
    return -sum(n * math.log2(n / len(key)) for n in counts.values()) if key else 0.0


def check_key_strength(owner: str, key: str) -> None:
    """Raises WeakKeyError for a published or guessable key; `owner` names it, e.g. "FERVID_API_KEYS: tenant 'a'"."""
    if key in PUBLISHED_KEYS:
        raise WeakKeyError(f"{owner} uses the published default key {key!r}; "
                           "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if len(key) < MIN_KEY_LENGTH or key_bits(key) < MIN_KEY_BITS:
        raise WeakKeyError(f"{owner} has a weak key ({len(key)} characters, about "
                           f"{key_bits(key):.0f} bits; at least {MIN_KEY_LENGTH} characters and {MIN_KEY_BITS:.0f} "
                           "bits are needed); generate one with `python -c 'import secrets; "
                           "print(secrets.token_urlsafe(32))'`")


@dataclass(frozen=True)
class KeyRing:
    """Digest of each key -> its tenant."""

    tenants_by_digest: dict[bytes, str]

    @classmethod
    def parse(cls, entries: str, *, allow_weak: bool = False) -> KeyRing:
        """From `tenant:key,tenant:sha256:<hex>` (commas or newlines); a malformed or weak entry is an error."""
        tenants: dict[bytes, str] = {}
        for entry in filter(None, (part.strip() for part in re.split(r"[,\n]", entries))):
            tenant, sep, key = entry.partition(":")
            if not sep or not tenant or not key:
                raise ValueError(f"FERVID_API_KEYS entry {entry!r} is not tenant:key or tenant:sha256:<hex>")
            if not is_safe_tenant(tenant):  # it names the tenant's folder in FERVID_FILE_URI_ROOTS' {tenant}
                raise ValueError(f"FERVID_API_KEYS: tenant {tenant!r} is not a safe name: 1 to 64 letters, digits, "
                                 "`.`, `_` or `-`, starting with a letter or digit")
            if hashed := HASHED.fullmatch(key):
                tenants[bytes.fromhex(hashed.group(1))] = tenant
                continue
            if key in PUBLISHED_KEYS or not allow_weak:
                check_key_strength(f"FERVID_API_KEYS: tenant {tenant!r}", key)
            tenants[key_digest(key)] = tenant
        return cls(tenants)

    def tenant_for(self, presented: str) -> str | None:
        """The tenant owning `presented`, comparing digests against every entry in constant time (no early exit)."""
        tenant = None
        digest = key_digest(presented)
        for candidate, owner in self.tenants_by_digest.items():
            if hmac.compare_digest(digest, candidate):
                tenant = owner
        return tenant


class KeySource:
    """FERVID_API_KEYS plus FERVID_API_KEYS_FILE, the file re-read whenever its mtime, size or inode changes; a file
    that is empty, no longer parses or names a weak key is logged and the keys read before stay in force.

    The file is read first and looked at (stat) after, and a look that does not match what was read (a writer was
    still at it) leaves the next request to read it again: a rewrite within one mtime tick cannot be missed."""

    def __init__(self, entries: str, keys_file: Path | None, *, allow_weak: bool = False) -> None:
        self._entries, self._file, self._allow_weak = entries, keys_file, allow_weak
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (mtime, size, inode) of the file as last read whole
        self._ring = self._read(at_start=True)  # at start-up a bad key raises: the API does not start

    def _look(self) -> tuple[int, int, int]:
        assert self._file is not None
        stat = os.stat(self._file)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _read(self, at_start: bool = False) -> KeyRing:
        if self._file is None:
            return KeyRing.parse(self._entries, allow_weak=self._allow_weak)
        data = self._file.read_bytes()
        look = self._look()
        self._seen = look if look[1] == len(data) else None
        if not at_start and not data.strip():
            raise ValueError("the file is empty (being rewritten?)")
        return KeyRing.parse(self._entries + "\n" + data.decode(), allow_weak=self._allow_weak)

    def current(self) -> KeyRing:
        if self._file is None:
            return self._ring
        try:
            changed = self._seen is None or self._look() != self._seen
        except OSError as error:
            log.error("cannot read FERVID_API_KEYS_FILE %s (%s); keeping the keys read before", self._file, error)
            return self._ring
        if changed:
            with self._lock:
                try:
                    self._ring = self._read()
                    log.info("FERVID_API_KEYS_FILE changed: %d keys now", len(self._ring.tenants_by_digest))
                except (OSError, ValueError, UnicodeDecodeError) as error:
                    log.error("FERVID_API_KEYS_FILE %s not reloaded: %s; keeping the keys read before",
                              self._file, error)
        return self._ring
