"""Tests of rayfs.uploads: staging in the spool, uploads to the emulator, failures and recovery.

Every test gets a fresh emulator with the seed dataset on a loopback port
picked by the OS (the `emulator` fixture of conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from rayfs.api import ApiClient
from rayfs.emulator import DEMO_CLIENT_ID, DEMO_TOKEN
from rayfs.errors import AlreadyExists, Busy, NoSuchPath, ReadOnly, SpoolLocked
from rayfs.uploads import MtimeStore, StagedFile, UploadManager

PROJECT = "334c972a-5756-45f7-8eb1-f3f84bedd525"
UPLOAD_PATH = "/attachment/add"
REPO_ROOT = Path(__file__).resolve().parents[1]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Deadline of the polling loops; only reached when something is broken.
POLL_DEADLINE_S = 120.0


def pattern(size: int, seed: int = 0) -> bytes:
    """Return `size` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(condition, message: str) -> None:
    """Poll `condition` until it is true; fail with `message` after POLL_DEADLINE_S."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {POLL_DEADLINE_S:.0f} s: {message}")
        time.sleep(0.01)


def spool_files(spool_dir: Path) -> list[str]:
    """Return the staged files' names in the spool, without the lock file."""
    return sorted(name for name in os.listdir(spool_dir) if name != "lock")


def rss_bytes() -> int:
    """Return this process's resident set size from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise AssertionError("VmRSS missing from /proc/self/status")


def stage(manager: UploadManager, name: str, data: bytes, *, chunk: int = MIB, project_id: str = PROJECT) -> None:
    """Create a staged file, write `data` in chunks, flush and close it."""
    handle = manager.create(project_id, name)
    for offset in range(0, len(data), chunk):
        manager.write(handle, offset, data[offset:offset + chunk])
    manager.flush(handle)
    manager.release(handle)


class Uploaded:
    """An on_uploaded callback that records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, staged: StagedFile, attachment) -> None:
        self.calls.append((staged, attachment))


class GatedClient:
    """Passes uploads to the real client, each only after `proceed` is set."""

    def __init__(self, client: ApiClient):
        self.client = client
        self.entered = threading.Event()
        self.proceed = threading.Event()

    def upload_attachment(self, *args, **kwargs):
        self.entered.set()
        self.proceed.wait(POLL_DEADLINE_S)
        return self.client.upload_attachment(*args, **kwargs)


@pytest.fixture
def client(emulator):
    with ApiClient(emulator.api_url, DEMO_TOKEN, DEMO_CLIENT_ID, backoff_base=0.01) as api_client:
        yield api_client


@pytest.fixture
def mtimes(tmp_path):
    store = MtimeStore(tmp_path / "mtimes.sqlite3")
    yield store
    store.close()


@pytest.fixture
def spool_dir(tmp_path):
    return tmp_path / "spool"


@pytest.fixture
def make_manager(client, mtimes, spool_dir):
    """Build managers on `spool_dir`, started unless start=False; all are closed without waiting at teardown."""
    managers = []

    def build(*, start: bool = True, api=None, write_back: float = 0.05, **options) -> UploadManager:
        manager = UploadManager(
            api or client, spool_dir, mtimes=mtimes, write_back=write_back,
            backoff_base=0.01, backoff_max=0.1, **options,
        )
        managers.append(manager)
        if start:
            manager.start()
        return manager

    yield build

    for manager in managers:
        manager.close(wait=False)


def attachment_names(client: ApiClient) -> list[str]:
    return [attachment.name for attachment in client.get_attachments(PROJECT)]


def only_attachment_named(client: ApiClient, name: str):
    matches = [attachment for attachment in client.get_attachments(PROJECT) if attachment.name == name]
    assert len(matches) == 1, f"expected one attachment named {name!r}, found {len(matches)}"
    return matches[0]


# -- staging -----------------------------------------------------------------------


def test_staged_file_reads_back_writes(make_manager):
    manager = make_manager(start=False)
    handle = manager.create(PROJECT, "scan.stl")

    assert manager.write(handle, 0, b"hello") == 5
    assert manager.write(handle, 10, b"world") == 5
    assert manager.read(handle, 0, 100) == b"hello\0\0\0\0\0world"
    assert manager.read(handle, 15, 10) == b""

    staged = manager.find(PROJECT, "scan.stl")
    assert staged.size == 15
    assert staged.state == "staged"
    assert staged.sent == 0
    assert staged.inode > 1
    assert staged.inode < 2**63
    manager.release(handle)


def test_staged_file_visible_per_project(make_manager):
    manager = make_manager(start=False)
    stage(manager, "a.stl", b"a")
    stage(manager, "b.stl", b"b", project_id="other-project")

    assert [staged.name for staged in manager.staged(PROJECT)] == ["a.stl"]
    assert [staged.name for staged in manager.staged("other-project")] == ["b.stl"]
    assert [staged.name for staged in manager.pending()] == ["a.stl", "b.stl"]


def test_create_existing_name_raises(make_manager):
    manager = make_manager(start=False)
    stage(manager, "scan.stl", b"data")

    with pytest.raises(AlreadyExists):
        manager.create(PROJECT, "scan.stl")


def test_open_missing_name_raises(make_manager):
    manager = make_manager(start=False)

    with pytest.raises(NoSuchPath):
        manager.open(PROJECT, "missing.stl", truncate=False)


def test_open_truncate_empties_file(make_manager):
    manager = make_manager(start=False)
    stage(manager, "scan.stl", b"old content")

    handle = manager.open(PROJECT, "scan.stl", truncate=True)
    manager.write(handle, 0, b"new")
    manager.release(handle)

    reader = manager.open(PROJECT, "scan.stl", truncate=False, write=False)
    assert manager.read(reader, 0, 100) == b"new"
    assert manager.find(PROJECT, "scan.stl").size == 3
    manager.release(reader)


def test_read_only_handle_rejects_writes(make_manager):
    manager = make_manager(start=False)
    stage(manager, "scan.stl", b"data")
    handle = manager.open(PROJECT, "scan.stl", truncate=False, write=False)

    with pytest.raises(ReadOnly):
        manager.write(handle, 0, b"x")
    manager.release(handle)


def test_truncate_extends_with_zeros(make_manager):
    manager = make_manager(start=False)
    stage(manager, "scan.stl", b"abc")

    manager.truncate(PROJECT, "scan.stl", 6)
    handle = manager.open(PROJECT, "scan.stl", truncate=False, write=False)
    assert manager.read(handle, 0, 100) == b"abc\0\0\0"
    manager.release(handle)

    manager.truncate(PROJECT, "scan.stl", 1)
    assert manager.find(PROJECT, "scan.stl").size == 1


def test_find_matches_nfc_form(make_manager):
    manager = make_manager(start=False)
    nfd_name = unicodedata.normalize("NFD", "상악 스캔.stl")
    nfc_name = unicodedata.normalize("NFC", nfd_name)
    stage(manager, nfd_name, b"data")

    assert nfd_name != nfc_name
    assert manager.find(PROJECT, nfc_name).name == nfd_name
    assert manager.find(PROJECT, nfd_name).name == nfd_name


def test_rename_replaces_staged_target(make_manager, spool_dir):
    manager = make_manager(start=False)
    stage(manager, "old.stl", b"new bytes")
    stage(manager, "target.stl", b"replaced bytes")
    renamed_id = manager.find(PROJECT, "old.stl").upload_id

    manager.rename(PROJECT, "old.stl", "target.stl")

    assert manager.find(PROJECT, "old.stl") is None
    assert manager.find(PROJECT, "target.stl").upload_id == renamed_id
    assert [staged.name for staged in manager.pending()] == ["target.stl"]
    assert spool_files(spool_dir) == [f"{renamed_id}.data", f"{renamed_id}.json"]
    metadata = json.loads((spool_dir / f"{renamed_id}.json").read_text(encoding="utf-8"))
    assert metadata["name"] == "target.stl"


def test_rename_keeps_inode(make_manager):
    manager = make_manager(start=False)
    stage(manager, ".x.ABC123", b"data")
    inode = manager.find(PROJECT, ".x.ABC123").inode

    manager.rename(PROJECT, ".x.ABC123", "x")

    assert manager.find(PROJECT, "x").inode == inode


def test_rename_missing_file_raises(make_manager):
    manager = make_manager(start=False)

    with pytest.raises(NoSuchPath):
        manager.rename(PROJECT, "missing.stl", "other.stl")


def test_unlink_removes_spool_files(make_manager, spool_dir):
    manager = make_manager(start=False)
    stage(manager, "scan.stl", b"data")

    manager.unlink(PROJECT, "scan.stl")

    assert manager.find(PROJECT, "scan.stl") is None
    assert manager.pending() == []
    assert spool_files(spool_dir) == []


def test_unlink_cancels_scheduled_upload(make_manager, emulator, spool_dir):
    manager = make_manager(write_back=3600)
    stage(manager, "scan.stl", b"data")

    manager.unlink(PROJECT, "scan.stl")
    manager.wait_idle()

    assert emulator.stats()["uploads"] == 0
    assert spool_files(spool_dir) == []


def test_spool_files_hold_metadata(make_manager, spool_dir):
    manager = make_manager(start=False)
    stage(manager, "scan.stl", b"12345")
    staged = manager.find(PROJECT, "scan.stl")

    metadata = json.loads((spool_dir / f"{staged.upload_id}.json").read_text(encoding="utf-8"))

    assert metadata["project_id"] == PROJECT
    assert metadata["name"] == "scan.stl"
    assert metadata["size"] == 5
    assert metadata["mtime_ns"] == staged.mtime_ns
    assert metadata["state"] == "staged"
    assert metadata["reason"] == ""
    assert metadata["attempts"] == 0
    assert (spool_dir / f"{staged.upload_id}.data").read_bytes() == b"12345"
    assert (spool_dir.stat().st_mode & 0o777) == 0o700


# -- uploads -----------------------------------------------------------------------


def test_upload_lands_with_same_bytes(make_manager, emulator, client, spool_dir):
    data = pattern(3 * MIB + 17)
    manager = make_manager(write_back=0.05)

    stage(manager, "scan.stl", data)
    wait_until(lambda: manager.pending() == [], "the staged file was not uploaded after its write-back delay")
    manager.wait_idle()

    attachment = only_attachment_named(client, "scan.stl")
    assert attachment.size == len(data)
    assert sha256(emulator.download(PROJECT, attachment.sk)) == sha256(data)
    assert emulator.stats()["uploads"] == 1
    assert spool_files(spool_dir) == []


def test_rsync_temp_rename_uploads_once(make_manager, emulator, client):
    data = pattern(100 * KIB)
    manager = make_manager(write_back=3600)

    stage(manager, ".x.ABC123", data)
    manager.set_mtime(PROJECT, ".x.ABC123", 1_500_000_000_000_000_000)
    manager.rename(PROJECT, ".x.ABC123", "x")
    manager.wait_idle()

    names = attachment_names(client)
    assert names.count("x") == 1
    assert names.count(".x.ABC123") == 0
    assert emulator.stats()["uploads"] == 1


def test_random_offset_writes_upload_identical(make_manager, emulator, client):
    size = 5 * MIB + 123
    data = pattern(size, seed=7)
    manager = make_manager(write_back=3600)
    handle = manager.create(PROJECT, "chunks.bin")

    offsets = list(range(0, size, MIB))
    random.Random(1).shuffle(offsets)
    for offset in offsets:
        manager.write(handle, offset, data[offset:offset + MIB])

    chooser = random.Random(2)
    for _ in range(200):
        offset = chooser.randrange(size)
        length = chooser.randrange(1, 4 * KIB)
        manager.write(handle, offset, data[offset:offset + length])

    manager.flush(handle)
    manager.release(handle)
    manager.wait_idle()

    attachment = only_attachment_named(client, "chunks.bin")
    assert sha256(emulator.download(PROJECT, attachment.sk)) == sha256(data)


def test_transient_faults_upload_exactly_once(make_manager, emulator, client):
    data = pattern(200 * KIB)
    before = len(client.get_attachments(PROJECT))
    emulator.set_faults(queue=[
        {"match": UPLOAD_PATH, "method": "POST", "status": 500},
        {"match": UPLOAD_PATH, "method": "POST", "status": 500},
        {"match": UPLOAD_PATH, "method": "POST", "status": 429, "retry_after": 1},
        {"match": UPLOAD_PATH, "method": "POST", "drop": True},
    ])
    manager = make_manager()

    stage(manager, "faults.stl", data)
    manager.wait_idle()

    assert len(client.get_attachments(PROJECT)) == before + 1
    assert emulator.stats()["uploads"] == 1
    attachment = only_attachment_named(client, "faults.stl")
    assert sha256(emulator.download(PROJECT, attachment.sk)) == sha256(data)


def test_errors_beyond_client_retries_retried_later(make_manager, emulator, client):
    # The client gives up after 6 attempts, so the seventh error reaches the manager's own retry.
    emulator.set_faults(queue=[{"match": UPLOAD_PATH, "method": "POST", "status": 503}] * 7)
    manager = make_manager()

    stage(manager, "retried.stl", b"retried")
    manager.wait_idle()

    assert attachment_names(client).count("retried.stl") == 1
    assert emulator.stats()["uploads"] == 1


def test_auth_error_retried_later(make_manager, emulator, client):
    emulator.set_faults(queue=[{"match": UPLOAD_PATH, "method": "POST", "status": 401}])
    manager = make_manager()

    stage(manager, "auth.stl", b"auth")
    manager.wait_idle()

    assert attachment_names(client).count("auth.stl") == 1


def test_payload_too_large_marks_failed(make_manager, emulator, client, spool_dir, caplog):
    before = attachment_names(client)
    emulator.set_faults(max_upload_bytes=10)
    manager = make_manager()

    with caplog.at_level(logging.ERROR, logger="rayfs.uploads"):
        stage(manager, "large.stl", pattern(4 * KIB))
        manager.wait_idle()

    staged = manager.find(PROJECT, "large.stl")
    assert staged.state == "failed"
    assert "413" in staged.reason
    assert (spool_dir / f"{staged.upload_id}.data").stat().st_size == 4 * KIB
    assert emulator.stats()["uploads"] == 0
    assert attachment_names(client) == before
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert any(PROJECT in message and "large.stl" in message for message in errors), errors


def test_failed_upload_requeued_by_write(make_manager, emulator, client):
    data = pattern(4 * KIB)
    emulator.set_faults(max_upload_bytes=10)
    manager = make_manager()
    stage(manager, "large.stl", data)
    manager.wait_idle()
    assert manager.find(PROJECT, "large.stl").state == "failed"

    emulator.reset_faults()
    handle = manager.open(PROJECT, "large.stl", truncate=False)
    manager.write(handle, 0, data[:1])
    assert manager.find(PROJECT, "large.stl").state == "staged"
    manager.release(handle)
    manager.wait_idle()

    assert manager.find(PROJECT, "large.stl") is None
    attachment = only_attachment_named(client, "large.stl")
    assert sha256(emulator.download(PROJECT, attachment.sk)) == sha256(data)


def test_wait_idle_include_failed_retries(make_manager, emulator, client):
    emulator.set_faults(max_upload_bytes=10)
    manager = make_manager()
    stage(manager, "large.stl", pattern(4 * KIB))
    manager.wait_idle()
    assert manager.find(PROJECT, "large.stl").state == "failed"

    emulator.reset_faults()
    manager.wait_idle(include_failed=True)

    assert manager.pending() == []
    assert attachment_names(client).count("large.stl") == 1


def test_busy_while_uploading(make_manager, client):
    data = pattern(10 * KIB)
    gate = GatedClient(client)
    manager = make_manager(api=gate)
    stage(manager, "busy.stl", data)
    other = manager.create(PROJECT, "other.stl")
    manager.write(other, 0, b"other")

    wait_until(gate.entered.is_set, "the upload of busy.stl did not start")
    assert manager.find(PROJECT, "busy.stl").state == "uploading"
    with pytest.raises(Busy):
        manager.open(PROJECT, "busy.stl", truncate=False)
    with pytest.raises(Busy):
        manager.open(PROJECT, "busy.stl", truncate=True)
    with pytest.raises(Busy):
        manager.truncate(PROJECT, "busy.stl", 0)
    with pytest.raises(Busy):
        manager.unlink(PROJECT, "busy.stl")
    with pytest.raises(Busy):
        manager.rename(PROJECT, "busy.stl", "renamed.stl")
    with pytest.raises(Busy):
        manager.rename(PROJECT, "other.stl", "busy.stl")

    reader = manager.open(PROJECT, "busy.stl", truncate=False, write=False)
    assert manager.read(reader, 0, len(data)) == data
    manager.release(reader)

    gate.proceed.set()
    manager.release(other)
    manager.wait_idle()
    assert sorted(name for name in attachment_names(client) if name in ("busy.stl", "other.stl")) == ["busy.stl", "other.stl"]


def test_open_writer_postpones_due_upload(make_manager, emulator, client):
    gate = GatedClient(client)
    manager = make_manager(api=gate, write_back=0)
    stage(manager, "first.stl", b"first")
    wait_until(gate.entered.is_set, "the upload of first.stl did not start")

    # open.stl becomes due while first.stl uploads, then is opened for writing again.
    stage(manager, "open.stl", b"due")
    handle = manager.open(PROJECT, "open.stl", truncate=False)
    gate.proceed.set()
    stage(manager, "closed.stl", b"closed")
    wait_until(lambda: manager.find(PROJECT, "closed.stl") is None, "closed.stl was not uploaded")
    assert manager.find(PROJECT, "open.stl").state == "staged"

    manager.write(handle, 3, b" and rewritten")
    manager.release(handle)
    manager.wait_idle()

    attachment = only_attachment_named(client, "open.stl")
    assert emulator.download(PROJECT, attachment.sk) == b"due and rewritten"
    assert emulator.stats()["uploads"] == 3


def test_set_mtime_stored_under_sk(make_manager, mtimes, client):
    uploaded = Uploaded()
    mtime_ns = 1_600_000_000_123_456_789
    manager = make_manager(write_back=3600, on_uploaded=uploaded)

    stage(manager, "dated.stl", b"dated")
    manager.set_mtime(PROJECT, "dated.stl", mtime_ns)
    manager.wait_idle()

    assert len(uploaded.calls) == 1
    staged, attachment = uploaded.calls[0]
    assert staged.name == "dated.stl"
    assert staged.mtime_ns == mtime_ns
    assert attachment.name == "dated.stl"
    assert attachment.sk == only_attachment_named(client, "dated.stl").sk
    assert mtimes.get(PROJECT, attachment.sk) == mtime_ns


def test_last_write_time_stored_without_set_mtime(make_manager, mtimes):
    uploaded = Uploaded()
    manager = make_manager(on_uploaded=uploaded)

    stage(manager, "written.stl", b"written")
    written_ns = manager.find(PROJECT, "written.stl").mtime_ns
    manager.wait_idle()

    _, attachment = uploaded.calls[0]
    assert mtimes.get(PROJECT, attachment.sk) == written_ns


def test_korean_nfd_name_kept_exactly(make_manager, client):
    name = unicodedata.normalize("NFD", "김민준 상악 스캔.stl")
    manager = make_manager()

    stage(manager, name, b"korean")
    manager.wait_idle()

    assert name != unicodedata.normalize("NFC", name)
    assert attachment_names(client).count(name) == 1


def test_status_file_lists_uploads(make_manager, spool_dir, tmp_path):
    status_path = tmp_path / "status.json"
    manager = make_manager(start=False, status_file=status_path)
    stage(manager, "scan.stl", b"12345")
    manager.set_mtime(PROJECT, "scan.stl", 1_000)

    status = json.loads(status_path.read_text(encoding="utf-8"))
    assert status["pid"] == os.getpid()
    assert status["spool"] == str(spool_dir)
    assert status["uploads"] == [
        {
            "project_id": PROJECT, "name": "scan.stl", "size": 5, "sent": 0,
            "state": "staged", "reason": "", "mtime_ns": 1_000,
        }
    ]

    manager.start()
    manager.wait_idle()
    assert json.loads(status_path.read_text(encoding="utf-8"))["uploads"] == []


def test_wait_idle_reports_progress(make_manager):
    reports = []
    manager = make_manager(write_back=3600)
    stage(manager, "scan.stl", b"12345")

    manager.wait_idle(reports.append)

    assert [staged.name for staged in reports[0]] == ["scan.stl"]


# -- spool lock, recovery and memory ------------------------------------------------------


def test_locked_spool_raises_spool_locked(make_manager):
    make_manager(start=False)

    with pytest.raises(SpoolLocked, match=rf"pid {os.getpid()}\b.*--spool-dir"):
        make_manager(start=False)


def test_closed_manager_releases_lock(make_manager):
    manager = make_manager(start=False)
    manager.close(wait=False)

    assert make_manager(start=False).pending() == []


def test_close_without_wait_keeps_files(make_manager, client, spool_dir):
    manager = make_manager(start=False)
    stage(manager, "kept.stl", b"kept")
    upload_id = manager.find(PROJECT, "kept.stl").upload_id
    manager.close(wait=False)

    successor = make_manager(start=False)
    recovered = successor.find(PROJECT, "kept.stl")
    assert recovered.upload_id == upload_id
    assert recovered.size == 4
    assert recovered.state == "staged"

    successor.start()
    successor.wait_idle()
    assert attachment_names(client).count("kept.stl") == 1
    assert spool_files(spool_dir) == []


def test_close_aborts_upload_in_flight(make_manager, emulator, client, spool_dir):
    # The server waits before it reads a body, so the 64 MiB cannot be sent before close() stops it.
    emulator.set_faults(latency_ms=1000)
    manager = make_manager(write_back=0)
    handle = manager.create(PROJECT, "big.bin")
    manager.truncate(PROJECT, "big.bin", 64 * MIB)
    manager.release(handle)

    wait_until(lambda: manager.find(PROJECT, "big.bin").sent > 0, "the upload of big.bin did not start sending")
    manager.close(wait=False)

    assert emulator.stats()["uploads"] == 0
    successor = make_manager(start=False)
    assert successor.find(PROJECT, "big.bin").state == "staged"
    assert successor.find(PROJECT, "big.bin").size == 64 * MIB


RECOVERY_SCRIPT = r"""
import sys, threading, time
from pathlib import Path
from rayfs.uploads import MtimeStore, UploadManager

spool_dir, mtimes_path, project = sys.argv[1:4]

class BlockingClient:
    # Never finishes an upload, so the first file stays "uploading" until the process is killed.
    def upload_attachment(self, *args, **kwargs):
        threading.Event().wait()

manager = UploadManager(BlockingClient(), Path(spool_dir), mtimes=MtimeStore(Path(mtimes_path)), write_back=0)
first = manager.create(project, "first.bin")
manager.write(first, 0, bytes(range(256)) * 400)
manager.flush(first)
manager.release(first)
second = manager.create(project, "second.bin")
manager.write(second, 0, b"second" * 1000)
manager.flush(second)
manager.start()

deadline = time.monotonic() + 60
while manager.find(project, "first.bin").state != "uploading":
    if time.monotonic() > deadline:
        sys.exit("first.bin never started uploading")
    time.sleep(0.01)
print("ready", flush=True)
threading.Event().wait()
"""


def test_killed_process_spool_recovered(make_manager, emulator, client, spool_dir, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", RECOVERY_SCRIPT, str(spool_dir), str(tmp_path / "child-mtimes.sqlite3"), PROJECT],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line == "ready\n", f"the staging process failed: {process.stderr.read() if process.poll() is not None else line}"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        process.stderr.close()

    manager = make_manager(start=False)
    assert sorted((staged.name, staged.state) for staged in manager.pending()) == [
        ("first.bin", "staged"), ("second.bin", "staged"),
    ]
    manager.start()
    manager.wait_idle()

    first = only_attachment_named(client, "first.bin")
    second = only_attachment_named(client, "second.bin")
    assert sha256(emulator.download(PROJECT, first.sk)) == sha256(bytes(range(256)) * 400)
    assert sha256(emulator.download(PROJECT, second.sk)) == sha256(b"second" * 1000)
    assert spool_files(spool_dir) == []


def test_failed_upload_retried_by_new_mount(make_manager, emulator, client):
    emulator.set_faults(max_upload_bytes=10)
    manager = make_manager()
    stage(manager, "large.stl", pattern(4 * KIB))
    manager.wait_idle()
    manager.close(wait=True)

    successor = make_manager(start=False)
    staged = successor.find(PROJECT, "large.stl")
    assert staged.state == "failed"
    assert "413" in staged.reason

    emulator.reset_faults()
    successor.start()
    successor.wait_idle()
    assert successor.pending() == []
    assert attachment_names(client).count("large.stl") == 1


def test_mtime_store_survives_reopen(tmp_path):
    path = tmp_path / "mtimes.sqlite3"
    store = MtimeStore(path)
    store.set(PROJECT, "attachments:1", 123)
    store.set(PROJECT, "attachments:1", 456)
    store.close()

    reopened = MtimeStore(path)
    assert reopened.get(PROJECT, "attachments:1") == 456
    assert reopened.get(PROJECT, "attachments:2") is None
    reopened.close()


def test_sparse_gigabyte_upload_memory(make_manager, emulator):
    uploaded = Uploaded()
    manager = make_manager(write_back=3600, on_uploaded=uploaded)
    stage(manager, "warm-up.bin", b"warm up")
    manager.wait_idle()
    before = rss_bytes()

    handle = manager.create(PROJECT, "sparse.bin")
    manager.truncate(PROJECT, "sparse.bin", GIB - 4)
    manager.write(handle, GIB - 4, b"tail")
    manager.release(handle)
    manager.wait_idle()
    growth = rss_bytes() - before

    assert [attachment.size for _, attachment in uploaded.calls] == [7, GIB]
    assert emulator.stats()["uploads"] == 2
    assert growth < 100 * MIB, f"RSS grew by {growth / MIB:.1f} MiB during a 1 GiB upload"
