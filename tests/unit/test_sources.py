"""A tenant's file:// and s3:// sources: only inside its own locations, checked as written and again where the file
is read, through one held descriptor. Real files, real symlinks, a real FIFO."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fervid.api_keys import KeyRing
from fervid.errors import MediaError
from fervid.media_store import Downloads, local_copy
from fervid.settings import Settings, get_settings
from fervid.sources import SOURCE_REFUSED_TEXT, SourceFence, held_file, parse_locations


def downloads() -> Downloads:
    """The download cache and limits of the settings as the test set them."""
    return Downloads.from_settings(get_settings())


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """/media/alice/clip.mp4 and /media/bob/secret.mp4; roots /media/{tenant}."""
    for tenant, name in (("alice", "clip.mp4"), ("bob", "secret.mp4")):
        (tmp_path / "media" / tenant).mkdir(parents=True)
        (tmp_path / "media" / tenant / name).write_bytes(f"{tenant}'s bytes".encode())
    return tmp_path / "media"


def fence(tenant: str, media: Path, extra: str = "", store: str = "file:///nowhere") -> SourceFence:
    return SourceFence.for_tenant(tenant, f"{media}/{{tenant}}{extra}", "s3://videos/{tenant},s3://shared",
                                  store)


def refused(read: Callable[[], object]) -> MediaError:
    with pytest.raises(MediaError) as failed:
        read()
    assert failed.value.code == "source_not_allowed"
    return failed.value


def read_held(uri: str, held_fence: SourceFence) -> bytes:
    with held_file(uri, held_fence) as path:
        return path.read_bytes()


def unread(path: Path) -> Callable[[], bool]:
    """Marks `path` as not read since 1970; the returned check says whether it is still unread (the file system
    updates atime on a read of a file whose atime is that old, even under relatime; skipped where it does not)."""
    probe = path.with_name(".atime-probe")
    probe.write_bytes(b"x")
    os.utime(probe, (0, time.time()))
    probe.read_bytes()
    if os.stat(probe).st_atime == 0:
        pytest.skip("this file system does not record reads (noatime)")
    probe.unlink()
    os.utime(path, (0, time.time()))
    return lambda: os.stat(path).st_atime == 0


def test_a_tenant_names_only_its_own_locations(media: Path) -> None:
    # given roots and prefixes per tenant, and one bucket open to every tenant
    alice = fence("alice", media)
    # when / then alice reaches her folder and prefix, and the shared bucket, nothing of bob's
    assert alice.admits((media / "alice" / "clip.mp4").as_uri())
    assert alice.admits("s3://videos/alice/clip.mp4") and alice.admits("s3://shared/any/clip.mp4")
    for uri in [(media / "bob" / "secret.mp4").as_uri(), "s3://videos/bob/clip.mp4", "s3://videos/alice-2/x.mp4",
                f"file://{media}/alice/../bob/secret.mp4", f"file://{media}/alice/./clip.mp4",
                f"file://{media}/alicex/clip.mp4", f"file://otherhost{media}/alice/clip.mp4", "s3://videos//bob/x",
                "s3://videos/alice/../bob/x", f"file://{media}/alice/%00clip.mp4", "file:///etc/passwd"]:
        assert not alice.admits(uri), uri
    # and http(s) sources are fenced where they are fetched, not here
    assert alice.admits("https://example.com/clip.mp4")


def test_the_upload_store_is_never_a_source(media: Path) -> None:
    alice = fence("alice", media, store=(media / "alice" / "uploads").as_uri())
    assert alice.admits((media / "alice" / "clip.mp4").as_uri())
    assert not alice.admits((media / "alice" / "uploads" / "job" / "media").as_uri())


@pytest.mark.parametrize("tenant", ["..", ".", "a/b", "a\\b", "a b", "{tenant}", "-x", "a" * 65, "caf\u00e9"])
def test_an_unsafe_tenant_name_reaches_nothing_and_is_refused_as_a_key(media: Path, tenant: str) -> None:
    assert fence(tenant, media).roots == ()
    with pytest.raises(ValueError, match="safe name"):
        KeyRing.parse(f"{tenant}:some-long-key-for-the-test", allow_weak=True)


@pytest.mark.parametrize(("entries", "scheme"), [
    ("relative/{tenant}", "file"), ("/mnt/t-{tenant}", "file"), ("/mnt/../{tenant}", "file"),
    ("s3://media/{tenant}x", "s3"), ("s3:///nobucket", "s3"), ("/mnt/media", "s3"), ("s3://media", "file"),
])
def test_malformed_locations_stop_the_service(entries: str, scheme: str) -> None:
    setting = "FERVID_FILE_URI_ROOTS" if scheme == "file" else "FERVID_S3_SOURCE_PREFIXES"
    with pytest.raises(ValueError, match=setting):
        parse_locations(entries, setting, scheme)
    with pytest.raises(ValueError, match=setting):
        Settings(**{"file_uri_roots" if scheme == "file" else "s3_source_prefixes": entries})


def test_a_file_inside_the_root_is_read_through_one_held_descriptor(media: Path) -> None:
    # given alice's file
    source = media / "alice" / "clip.mp4"
    with held_file(source.as_uri(), fence("alice", media)) as path:
        # when its name is swapped for a symlink to bob's file while it is held
        source.rename(media / "alice" / "old.mp4")
        source.symlink_to(media / "bob" / "secret.mp4")
        # then the held path still reads the file that was checked, never bob's
        assert path.read_bytes() == b"alice's bytes"
        assert str(path).startswith(f"/proc/{os.getpid()}/fd/")
        # and so does another process of this user, as the worker's decoder processes read it
        other = subprocess.run(["cat", str(path)], capture_output=True, check=True)
        assert other.stdout == b"alice's bytes"


def test_symlinks_out_of_the_root_are_refused_and_their_targets_never_read(media: Path) -> None:
    # given symlinks in alice's folder to bob's file and to bob's folder, and bob's file marked unread
    secret = media / "bob" / "secret.mp4"
    still_unread = unread(secret)
    (media / "alice" / "link.mp4").symlink_to(secret)
    (media / "alice" / "bobs").symlink_to(media / "bob")
    alice = fence("alice", media)
    # when alice's jobs name them, then they are refused and bob's file was not read
    for uri in [(media / "alice" / "link.mp4").as_uri(), (media / "alice" / "bobs" / "secret.mp4").as_uri()]:
        refused(lambda uri=uri: read_held(uri, alice))
    assert still_unread()


def test_a_symlink_inside_the_root_is_followed(media: Path) -> None:
    # an alias within alice's own folder reads her own file
    (media / "alice" / "alias.mp4").symlink_to(media / "alice" / "clip.mp4")
    assert read_held((media / "alice" / "alias.mp4").as_uri(), fence("alice", media)) == b"alice's bytes"


def test_missing_forbidden_and_odd_files_read_the_same(media: Path) -> None:
    # given a missing file, a folder, a FIFO (no writer: opening it must not block) and bob's file
    os.mkfifo(media / "alice" / "pipe.mp4")
    (media / "alice" / "folder.mp4").mkdir()
    alice = fence("alice", media)
    uris = [(media / "alice" / name).as_uri() for name in ("missing.mp4", "folder.mp4", "pipe.mp4")]
    # when alice's jobs name them, then each is refused with one text
    messages = {refused(lambda uri=uri: read_held(uri, alice)).message
                for uri in [*uris, (media / "bob" / "secret.mp4").as_uri()]}
    assert messages == {SOURCE_REFUSED_TEXT}


def test_a_folder_swapped_for_a_symlink_after_the_check_is_caught_on_the_open_descriptor(
    media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given alice's file in a subfolder, and bob's file at the same place in his folder, marked unread
    (media / "alice" / "sub").mkdir()
    (media / "alice" / "sub" / "clip.mp4").write_bytes(b"alice's bytes")
    (media / "bob" / "sub").mkdir()
    (media / "bob" / "sub" / "clip.mp4").write_bytes(b"bob's bytes")
    still_unread = unread(media / "bob" / "sub" / "clip.mp4")
    real_realpath = os.path.realpath
    swapped = []

    def realpath_then_swap(path: str) -> str:
        # the race: right after the path is resolved and checked, alice's subfolder becomes a symlink to bob's
        resolved = real_realpath(path)
        if not swapped:
            swapped.append(path)
            (media / "alice" / "sub").rename(media / "alice" / "was-sub")
            (media / "alice" / "sub").symlink_to(media / "bob" / "sub")
        return resolved

    monkeypatch.setattr(os.path, "realpath", realpath_then_swap)
    # when the file is opened, then the descriptor's real place gives it away: refused, bob's file unread
    refused(lambda: read_held((media / "alice" / "sub" / "clip.mp4").as_uri(), fence("alice", media)))
    monkeypatch.undo()
    assert swapped and still_unread()


def test_a_final_name_swapped_for_a_symlink_after_the_check_is_not_followed(
    media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a check that passes, then alice's file turned into a symlink to bob's before it is opened
    secret = media / "bob" / "secret.mp4"
    still_unread = unread(secret)
    source = media / "alice" / "clip.mp4"
    real_realpath = os.path.realpath

    def realpath_then_swap(path: str) -> str:
        resolved = real_realpath(path)
        if source.exists() and not source.is_symlink():
            source.unlink()
            source.symlink_to(secret)
        return resolved

    monkeypatch.setattr(os.path, "realpath", realpath_then_swap)
    # when it is opened, then O_NOFOLLOW refuses the symlink
    refused(lambda: read_held(source.as_uri(), fence("alice", media)))
    monkeypatch.undo()
    assert source.is_symlink() and still_unread()


def test_local_copy_fences_file_and_s3_sources_of_a_tenant(fervid_env: pytest.MonkeyPatch, media: Path) -> None:
    # given alice's fence from the settings
    fervid_env.setenv("FERVID_FILE_URI_ROOTS", f"{media}/{{tenant}}")
    fervid_env.setenv("FERVID_S3_SOURCE_PREFIXES", "s3://videos/{tenant}")
    get_settings.cache_clear()
    alice = get_settings().source_fence("alice")
    # when a worker reads her own file, bob's file and bob's s3 key for her job
    with local_copy((media / "alice" / "clip.mp4").as_uri(), downloads(), cache_key="job", fence=alice) as path:
        assert path.read_bytes() == b"alice's bytes"
    # then only her own is read; the s3 key is refused before any request is made
    def read(uri: str) -> bytes:
        with local_copy(uri, downloads(), cache_key="job", fence=alice) as path:
            return path.read_bytes()

    refused(lambda: read((media / "bob" / "secret.mp4").as_uri()))
    refused(lambda: read("s3://videos/bob/clip.mp4"))
