"""Uploads through a real FUSE mount: cp, rsync, random writes, faults, crashes and memory."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import time
import unicodedata
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

KO = "334c972a-5756-45f7-8eb1-f3f84bedd525"
SEED_ATTACHMENTS = {"file0.png", "file1.png"}

# Deadline for a poll loop to give up with a clear message; not a timing assertion.
POLL_DEADLINE = 120.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def server_attachments(emulator) -> dict[str, dict]:
    """Return the server's attachments of project KO-0005 by name, leaving out the seed files."""
    records = emulator.api_get(f"/project/{KO}/attachments")
    return {record["name"]: record for record in records if record["name"] not in SEED_ATTACHMENTS}


def wait_until(condition, message: str):
    deadline = time.monotonic() + POLL_DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting: {message}")


def wait_for_server_names(emulator, names: set[str]) -> dict[str, dict]:
    def found_all() -> dict[str, dict] | None:
        found = server_attachments(emulator)
        return found if set(found) >= names else None

    return wait_until(found_all, f"the emulator to have {sorted(names)}")


def spool_files(mount) -> list[str]:
    spool = mount.cache_dir / "spool"
    return sorted(path.name for path in spool.iterdir() if path.name.endswith((".data", ".json"))) if spool.exists() else []


@pytest.fixture
def upload_mount(emulator, mount_factory):
    return mount_factory(emulator, "--write-back", "0.2")


def test_cp_uploads_files_identically(upload_mount, emulator, tmp_path):
    big = tmp_path / "scan.stl"
    big.write_bytes(random.Random(1).randbytes(5 * 1024 * 1024))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    target = upload_mount.path / "KO-0005" / "attachments"

    result = subprocess.run(["cp", str(big), str(empty), str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    found = wait_for_server_names(emulator, {"scan.stl", "empty.txt"})
    assert sha256(emulator.download(KO, found["scan.stl"]["sk"])) == sha256(big.read_bytes())
    assert emulator.download(KO, found["empty.txt"]["sk"]) == b""
    assert found["scan.stl"]["size"] == 5 * 1024 * 1024


def test_listing_shows_server_record_after_upload(upload_mount, emulator, tmp_path):
    path = upload_mount.path / "KO-0005" / "attachments" / "note.txt"
    path.write_bytes(b"hello")
    assert os.getxattr(path, "user.rayfs.upload") in (b"staged", b"uploading")

    found = wait_for_server_names(emulator, {"note.txt"})
    sk = found["note.txt"]["sk"].encode()
    wait_until(lambda: sk in _xattr_or_none(path, "user.rayteams.sk"), "the listing to show the server's record")
    assert os.stat(path).st_mode & 0o777 == 0o444
    assert path.read_bytes() == b"hello"
    assert spool_files(upload_mount) == []


def _xattr_or_none(path: Path, name: str) -> bytes:
    try:
        return os.getxattr(path, name)
    except OSError:
        return b""


def test_staged_file_reads_back_before_upload(emulator, mount_factory):
    mount = mount_factory(emulator, "--write-back", "3600")
    path = mount.path / "KO-0005" / "attachments" / "draft.txt"
    path.write_bytes(b"first version")

    assert path.read_bytes() == b"first version"
    assert path.stat().st_size == 13
    os.truncate(path, 5)
    assert path.read_bytes() == b"first"
    os.rename(path, path.with_name("final.txt"))
    assert sorted(os.listdir(path.parent)) == ["file0.png", "file1.png", "final.txt"]
    os.unlink(path.with_name("final.txt"))
    assert sorted(os.listdir(path.parent)) == ["file0.png", "file1.png"]
    assert spool_files(mount) == []


def test_rsync_uploads_each_file_once(upload_mount, emulator, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for index in range(3):
        (source / f"scan-{index}.stl").write_bytes(random.Random(index).randbytes(100_000 + index))
    target = f"{upload_mount.path}/KO-0005/attachments/"

    first = subprocess.run(["rsync", "-a", f"{source}/", target], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    found = wait_for_server_names(emulator, {"scan-0.stl", "scan-1.stl", "scan-2.stl"})
    wait_until(lambda: spool_files(upload_mount) == [], "the spool to empty")
    uploads_after_first = emulator.stats()["uploads"]

    second = subprocess.run(["rsync", "-a", "--stats", f"{source}/", target], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert re.search(r"Number of regular files transferred: 0\b", second.stdout), second.stdout
    time.sleep(0.5)
    assert emulator.stats()["uploads"] == uploads_after_first
    assert sorted(found) == ["scan-0.stl", "scan-1.stl", "scan-2.stl"]
    assert len(server_attachments(emulator)) == 3


def test_kept_mtime_survives_upload(upload_mount, emulator, tmp_path):
    path = upload_mount.path / "KO-0005" / "attachments" / "dated.txt"
    path.write_bytes(b"dated")
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))

    wait_for_server_names(emulator, {"dated.txt"})
    wait_until(lambda: _xattr_or_none(path, "user.rayteams.sk"), "the listing to show the server's record")
    assert path.stat().st_mtime_ns == 1_600_000_000_000_000_000


def test_chunked_and_random_writes_upload_identically(upload_mount, emulator):
    folder = upload_mount.path / "KO-0005" / "attachments"
    data = random.Random(7).randbytes(4 * 1024 * 1024)

    with open(folder / "chunked.bin", "wb") as handle:
        for start in range(0, len(data), 1024 * 1024):
            handle.write(data[start : start + 1024 * 1024])

    pieces = list(range(0, len(data), 65536))
    random.Random(8).shuffle(pieces)
    descriptor = os.open(folder / "random.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for start in pieces:
            os.pwrite(descriptor, data[start : start + 65536], start)
    finally:
        os.close(descriptor)

    found = wait_for_server_names(emulator, {"chunked.bin", "random.bin"})
    assert sha256(emulator.download(KO, found["chunked.bin"]["sk"])) == sha256(data)
    assert sha256(emulator.download(KO, found["random.bin"]["sk"])) == sha256(data)


def test_faults_during_upload_give_one_attachment(upload_mount, emulator):
    add = {"match": "/attachment/add", "method": "POST"}
    emulator.set_faults(
        queue=[{**add, "status": 500}, {**add, "status": 500}, {**add, "status": 429, "retry_after": 1}, {**add, "drop": True}]
    )
    (upload_mount.path / "KO-0005" / "attachments" / "retried.stl").write_bytes(b"x" * 10_000)

    wait_for_server_names(emulator, {"retried.stl"})
    wait_until(lambda: spool_files(upload_mount) == [], "the spool to empty")
    assert list(server_attachments(emulator)) == ["retried.stl"]
    assert emulator.set_faults()["queue"] == []


def test_rejected_upload_stays_staged(upload_mount, emulator):
    emulator.set_faults(max_upload_bytes=100)
    path = upload_mount.path / "KO-0005" / "attachments" / "too-big.stl"
    path.write_bytes(b"y" * 1000)

    wait_until(lambda: _xattr_or_none(path, "user.rayfs.upload").startswith(b"failed"), "the upload to fail")
    assert b"413" in os.getxattr(path, "user.rayfs.upload")
    status = upload_mount.rayfs("status", str(upload_mount.path))
    assert status.returncode == 0, status.stderr
    assert "too-big.stl" in status.stdout
    assert "failed" in status.stdout
    assert "413" in status.stdout
    assert path.read_bytes() == b"y" * 1000
    assert len(spool_files(upload_mount)) == 2
    assert server_attachments(emulator) == {}
    assert "ERROR" in upload_mount.log()


def test_killed_mount_finishes_uploads_on_remount(emulator, mount_factory):
    first = mount_factory(emulator, "--write-back", "3600", name="first")
    for name in ("a.stl", "b.stl"):
        (first.path / "KO-0005" / "attachments" / name).write_bytes(name.encode() * 1000)
    pid = first.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _pid_alive(pid), "the killed mount process to end")
    assert subprocess.run(["fusermount3", "-u", str(first.path)], capture_output=True).returncode == 0

    second = mount_factory(emulator, "--write-back", "0.2", name="second", cache_dir=first.cache_dir)
    found = wait_for_server_names(emulator, {"a.stl", "b.stl"})
    wait_until(lambda: spool_files(second) == [], "the spool to empty")
    assert emulator.download(KO, found["a.stl"]["sk"]) == b"a.stl" * 1000
    assert sorted(server_attachments(emulator)) == ["a.stl", "b.stl"]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_second_mount_on_same_spool_is_refused(emulator, mount_factory, tmp_path):
    first = mount_factory(emulator, name="first")
    with pytest.raises(AssertionError) as caught:
        mount_factory(emulator, name="second", cache_dir=first.cache_dir)
    assert "spool" in str(caught.value)


def test_unmount_waits_for_uploads(emulator, mount_factory):
    # A write-back delay far beyond the test: unmount must start the upload itself.
    mount = mount_factory(emulator, "--write-back", "3600")
    (mount.path / "KO-0005" / "attachments" / "last.stl").write_bytes(b"z" * 50_000)

    result = mount.rayfs("unmount", str(mount.path))
    assert result.returncode == 0, result.stderr
    assert "last.stl" in server_attachments(emulator)
    assert spool_files(mount) == []


def test_unmount_no_wait_keeps_spool(emulator, mount_factory):
    mount = mount_factory(emulator, "--write-back", "3600")
    (mount.path / "KO-0005" / "attachments" / "later.stl").write_bytes(b"l" * 1000)

    result = mount.rayfs("unmount", "--no-wait", str(mount.path))
    assert result.returncode == 0, result.stderr
    assert server_attachments(emulator) == {}
    assert len(spool_files(mount)) == 2


def test_sparse_gigabyte_upload_keeps_memory_flat(upload_mount, emulator):
    pid = upload_mount.pid
    before = _rss_peak_kib(pid)
    path = upload_mount.path / "KO-0005" / "attachments" / "sparse.bin"
    subprocess.run(["truncate", "-s", "1G", str(path)], check=True)

    found = wait_for_server_names(emulator, {"sparse.bin"})
    assert found["sparse.bin"]["size"] == 1024**3
    growth_mib = (_rss_peak_kib(pid) - before) / 1024
    assert growth_mib < 100, f"peak RSS grew by {growth_mib:.0f} MiB"


def _rss_peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def test_korean_and_nfd_names_upload(upload_mount, emulator):
    nfc = "김민준 스캔.stl"
    nfd = unicodedata.normalize("NFD", "이서연 사진.png")
    folder = upload_mount.path / "KO-0005" / "attachments"
    (folder / nfc).write_bytes(b"nfc")
    (folder / nfd).write_bytes(b"nfd")

    found = wait_for_server_names(emulator, {nfc, nfd})
    assert emulator.download(KO, found[nfc]["sk"]) == b"nfc"
    assert emulator.download(KO, found[nfd]["sk"]) == b"nfd"
    wait_until(lambda: _xattr_or_none(folder / nfc, "user.rayteams.sk"), "the listing to show the server's record")
    assert (folder / unicodedata.normalize("NFC", nfd)).read_bytes() == b"nfd"


def test_server_attachments_refuse_changes(upload_mount):
    path = upload_mount.path / "KO-0005" / "attachments" / "file0.png"
    with pytest.raises(PermissionError):
        open(path, "r+b")
    with pytest.raises(PermissionError):
        os.truncate(path, 0)
    for change in (lambda: os.unlink(path), lambda: os.rename(path, path.with_name("renamed.png"))):
        with pytest.raises(OSError) as caught:
            change()
        assert caught.value.errno == errno.EPERM
    with pytest.raises(PermissionError):
        open(upload_mount.path / "KO-0005" / "memos" / "new.json", "w")
    with pytest.raises(PermissionError):
        open(upload_mount.path / ".trash" / "project-1110201" / "attachments" / "new.stl", "w")


def test_sigterm_finishes_uploads_first(emulator, mount_factory):
    mount = mount_factory(emulator, "--write-back", "3600")
    (mount.path / "KO-0005" / "attachments" / "before-stop.stl").write_bytes(b"s" * 20_000)
    pid = mount.pid

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not _pid_alive(pid), "the mount process to exit after SIGTERM")

    assert "before-stop.stl" in server_attachments(emulator)
    assert spool_files(mount) == []
    assert not mount.mounted()


def test_cp_preserving_attributes_succeeds(upload_mount, emulator, tmp_path):
    source = tmp_path / "kept.stl"
    source.write_bytes(b"k" * 1000)
    os.utime(source, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))

    result = subprocess.run(["cp", "-a", str(source), str(upload_mount.path / "KO-0005" / "attachments")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    wait_for_server_names(emulator, {"kept.stl"})


def test_rsync_temporary_file_is_held(emulator, mount_factory):
    mount = mount_factory(emulator, "--write-back", "0.1")
    folder = mount.path / "KO-0005" / "attachments"
    (folder / ".scan.stl.Ab12Cd").write_bytes(b"partial")
    (folder / "marker.txt").write_bytes(b"m")

    wait_for_server_names(emulator, {"marker.txt"})
    assert ".scan.stl.Ab12Cd" not in server_attachments(emulator)
    assert os.getxattr(folder / ".scan.stl.Ab12Cd", "user.rayfs.upload") == b"staged"

    os.rename(folder / ".scan.stl.Ab12Cd", folder / "scan.stl")
    found = wait_for_server_names(emulator, {"scan.stl"})
    assert emulator.download(KO, found["scan.stl"]["sk"]) == b"partial"
