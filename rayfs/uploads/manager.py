"""UploadManager: staged files, their handles, and the worker thread that uploads them.

A new file in a project's attachments/ folder is staged in the spool, read
and written there like a local file, and uploaded in the background once
its last writing handle closes and the write-back delay has passed.

Locks: `_lock` (with its condition `_cond`) guards the in-memory state. An
entry's `persist_lock` orders the writes of its JSON file, and the status
file has its own lock. A thread may take the status lock, then an entry's
`persist_lock`, then `_lock`, never the other way round. File I/O that can
block (fsync, the upload itself) happens outside `_lock`, which is why
operations that change a file without a handle pin it through `writers`.

A failed upload (state "failed") is never deleted, and the worker does not
retry it on its own. It is queued again by a later write, truncate or rename
of the file, by `wait_idle(include_failed=True)`, or once by `start()` of
the next mount of the spool.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rayfs.errors import AlreadyExists, Busy, ConfigError, NoSuchPath, RayfsError, ReadOnly
from rayfs.tree.names import lookup_key
from rayfs.uploads.failures import backoff_delay, describe, is_permanent
from rayfs.uploads.mtimes import MtimeStore
from rayfs.uploads.spool import Spool, new_upload_id
from rayfs.uploads.staged import (
    STATE_FAILED,
    STATE_STAGED,
    STATE_UPLOADING,
    StagedEntry,
    StagedFile,
    is_temporary_name,
)
from rayfs.uploads.status import StatusFile

if TYPE_CHECKING:
    from rayfs.api.client import ApiClient
    from rayfs.api.records import Attachment

logger = logging.getLogger(__name__)

# Seconds close() waits for the worker to stop. The worker can be inside the
# API client's own retries, which it cannot interrupt between attempts.
CLOSE_JOIN_TIMEOUT = 60.0

# Seconds between two calls of wait_idle's progress callback.
PROGRESS_INTERVAL = 1.0


class _UploadCancelled(Exception):
    """Raised from the progress callback to stop sending a body when the manager closes."""


@dataclass(eq=False)
class _Handle:
    """An open handle: its own file descriptor on the entry's data file."""

    number: int
    entry: StagedEntry
    fd: int
    writable: bool


class UploadManager:
    """Stages new attachments in `spool_dir` and uploads them with `api` in one background thread.

    The constructor creates `spool_dir` (mode 0700), locks it against other
    processes and loads the files an earlier process left. Nothing uploads
    before `start()`. `write_back` is the delay in seconds between the close
    of a file's last writing handle and its upload. `on_uploaded(staged,
    attachment)` runs in the worker thread after each upload, once the file
    has left `staged()` and `find()`. `status_file`, if given, is kept up to
    date for other processes. `backoff_base` and `backoff_max` bound the
    delay in seconds before retrying a failed upload.

    Raises SpoolLocked when another process holds the spool.
    """

    def __init__(
        self,
        api: ApiClient,
        spool_dir: Path,
        *,
        mtimes: MtimeStore,
        write_back: float = 2.0,
        on_uploaded: Callable[[StagedFile, Attachment], None] | None = None,
        status_file: Path | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
    ):
        if write_back < 0 or backoff_base < 0 or backoff_max < 0:
            raise ConfigError(
                f"invalid upload timing: write_back={write_back}, backoff_base={backoff_base}, "
                f"backoff_max={backoff_max}; each must be 0 seconds or more"
            )
        self._api = api
        self._mtimes = mtimes
        self._write_back = write_back
        self._on_uploaded = on_uploaded
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._entries: dict[str, StagedEntry] = {}
        self._names: dict[tuple[str, str], list[StagedEntry]] = {}
        self._handles: dict[int, _Handle] = {}
        self._handle_numbers = itertools.count(1)

        self._worker: threading.Thread | None = None
        self._current: StagedEntry | None = None
        self._urgent = 0
        self._stopping = False
        self._abort = False
        self._closed = False

        self.spool = Spool(spool_dir)
        try:
            recovered = self.spool.recover()
            for entry in recovered:
                self._index(entry)
            for entry in recovered:
                self._persist(entry)
        except BaseException:
            self.spool.unlock()
            raise

        self._status = StatusFile(status_file, self.spool.directory, self.pending)
        self._status.write()
        logger.info("upload spool %s opened with %d staged files", self.spool.directory, len(recovered))

    # -- index (callers hold _lock) --------------------------------------------

    def _index(self, entry: StagedEntry) -> None:
        self._entries[entry.upload_id] = entry
        self._names.setdefault((entry.project_id, lookup_key(entry.name)), []).append(entry)

    def _unindex(self, entry: StagedEntry) -> None:
        key = (entry.project_id, lookup_key(entry.name))
        same_key = self._names.get(key, [])
        if entry in same_key:
            same_key.remove(entry)
        if not same_key:
            self._names.pop(key, None)
        self._entries.pop(entry.upload_id, None)

    def _lookup(self, project_id: str, name: str) -> StagedEntry | None:
        """Return the entry named exactly `name`, else one whose name has the same NFC form."""
        candidates = self._names.get((project_id, lookup_key(name)))
        if not candidates:
            return None
        for entry in candidates:
            if entry.name == name:
                return entry
        return candidates[0]

    def _require(self, project_id: str, name: str) -> StagedEntry:
        entry = self._lookup(project_id, name)
        if entry is None:
            raise NoSuchPath(f"no staged file {name!r} in project {project_id}")
        return entry

    def _check_open(self) -> None:
        if self._closed:
            raise ReadOnly(f"upload spool {self.spool.directory} is closed; new files cannot be staged")

    def _handle(self, number: int) -> _Handle:
        with self._lock:
            handle = self._handles.get(number)
        if handle is None:
            raise NoSuchPath(f"no open upload handle {number}")
        return handle

    def _new_handle(self, entry: StagedEntry, fd: int, writable: bool) -> int:
        number = next(self._handle_numbers)
        self._handles[number] = _Handle(number, entry, fd, writable)
        return number

    # -- state changes (callers hold _lock) --------------------------------------

    def _mark_written(self, entry: StagedEntry) -> bool:
        """Record a change of the file's bytes; return True when it queued a failed upload again."""
        entry.mtime_ns = time.time_ns()
        entry.changed = True
        entry.unsynced = True
        entry.touch_metadata()
        return self._requeue(entry)

    def _requeue(self, entry: StagedEntry, cause: str = "after a change") -> bool:
        """Turn a failed upload back into a staged one; return True when it was failed."""
        if entry.state != STATE_FAILED:
            return False

        entry.state = STATE_STAGED
        entry.reason = ""
        entry.failures = 0
        entry.retry_at = 0.0
        entry.touch_metadata()
        logger.info("upload %s of %r to project %s queued again %s", entry.upload_id, entry.name, entry.project_id, cause)
        return True

    def _schedule(self, entry: StagedEntry) -> None:
        """Make the upload due after the write-back delay and wake the worker."""
        entry.due = time.monotonic() + self._write_back
        entry.changed = False
        self._cond.notify_all()
        logger.debug(
            "upload %s of %r to project %s due in %.2f s", entry.upload_id, entry.name, entry.project_id, self._write_back,
        )

    # -- persistence -------------------------------------------------------------

    def _persist(self, entry: StagedEntry) -> None:
        """Write the entry's JSON file if it changed since the last write; durable on return."""
        with entry.persist_lock:
            with self._lock:
                if entry.deleted or entry.version == entry.persisted_version:
                    return
                version = entry.version
                metadata = entry.metadata()

            self.spool.write_metadata(entry.upload_id, metadata)
            entry.persisted_version = version

    def _delete_files(self, entry: StagedEntry) -> None:
        """Remove an entry's spool files; the caller has already marked it deleted."""
        with entry.persist_lock:
            self.spool.delete(entry.upload_id)

    # -- queries -----------------------------------------------------------------

    def staged(self, project_id: str) -> list[StagedFile]:
        """Return the staged files of a project in any state, oldest first."""
        with self._lock:
            return [entry.snapshot() for entry in self._entries.values() if entry.project_id == project_id]

    def find(self, project_id: str, name: str) -> StagedFile | None:
        """Return the staged file named exactly `name`, else one whose name has the same NFC form, or None."""
        with self._lock:
            entry = self._lookup(project_id, name)
            return None if entry is None else entry.snapshot()

    def pending(self) -> list[StagedFile]:
        """Return every staged file in any state, oldest first."""
        with self._lock:
            return [entry.snapshot() for entry in self._entries.values()]

    # -- file operations -----------------------------------------------------------

    def create(self, project_id: str, name: str) -> int:
        """Stage a new empty file and return a handle open for reading and writing.

        The file's JSON and data files are durable on return. Raises
        AlreadyExists when a staged file of the project has this name.
        """
        with self._lock:
            self._check_open()
            if self._lookup(project_id, name) is not None:
                raise AlreadyExists(f"a staged file named {name!r} exists in project {project_id}")

        now_ns = time.time_ns()
        entry = StagedEntry(
            upload_id=new_upload_id(),
            project_id=project_id,
            name=name,
            size=0,
            mtime_ns=now_ns,
            created_ms=now_ns // 1_000_000,
            changed=True,
            writers=1,
        )
        self.spool.write_metadata(entry.upload_id, entry.metadata())
        entry.persisted_version = entry.version
        self.spool.create_data(entry.upload_id)
        fd = os.open(self.spool.data_path(entry.upload_id), os.O_RDWR)

        with self._lock:
            if self._lookup(project_id, name) is not None:
                entry.deleted = True
            else:
                self._index(entry)
                number = self._new_handle(entry, fd, writable=True)

        if entry.deleted:
            # Another thread staged the same name while the files were created.
            os.close(fd)
            self._delete_files(entry)
            raise AlreadyExists(f"a staged file named {name!r} exists in project {project_id}")

        logger.debug("upload %s: staged new file %r in project %s", entry.upload_id, name, project_id)
        self._status.write()
        return number

    def open(self, project_id: str, name: str, *, truncate: bool, write: bool = True) -> int:
        """Open a staged file and return a handle.

        `write` selects whether the handle may write. A writing handle delays
        the file's upload until it is released. Pass write=False for
        read-only opens, which work during an upload and do not delay it.
        `truncate` empties the file and implies `write`. Raises NoSuchPath
        when no staged file has this name, and Busy when the file is being
        uploaded and the handle would write.
        """
        writes = write or truncate
        entry = self._pin(project_id, name, writes=writes)
        fd = self._open_data(entry, os.O_RDWR if writes else os.O_RDONLY, pinned=writes)

        if truncate:
            try:
                os.ftruncate(fd, 0)
            except BaseException:
                os.close(fd)
                self._unpin(entry, writes)
                raise

        with self._lock:
            requeued = False
            if truncate:
                entry.size = 0
                requeued = self._mark_written(entry)
            number = self._new_handle(entry, fd, writes)

        logger.debug("upload %s: handle %d opened (write=%s, truncate=%s)", entry.upload_id, number, writes, truncate)
        if requeued:
            self._status.write()
        return number

    def _pin(self, project_id: str, name: str, *, writes: bool) -> StagedEntry:
        """Return the staged file `name`, counted as open for writing when `writes`; Busy while it uploads."""
        with self._lock:
            self._check_open()
            entry = self._require(project_id, name)
            if writes and entry.state == STATE_UPLOADING:
                raise Busy(f"staged file {name!r} of project {project_id} is being uploaded; try again when it is done")
            if writes:
                entry.writers += 1
            return entry

    def _open_data(self, entry: StagedEntry, flags: int, *, pinned: bool) -> int:
        """Open a staged file's data file; on failure undo `_pin` and raise NoSuchPath if it was deleted."""
        try:
            return os.open(self.spool.data_path(entry.upload_id), flags)
        except FileNotFoundError as exc:
            self._unpin(entry, pinned)
            raise NoSuchPath(f"staged file {entry.name!r} of project {entry.project_id} was deleted") from exc
        except BaseException:
            self._unpin(entry, pinned)
            raise

    def _unpin(self, entry: StagedEntry, pinned: bool) -> None:
        if not pinned:
            return
        with self._lock:
            entry.writers -= 1
            self._cond.notify_all()

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Return up to `size` bytes at `offset`; holes read as zeros, past the end reads b""."""
        return os.pread(self._handle(handle).fd, size, offset)

    def write(self, handle: int, offset: int, data: bytes) -> int:
        """Write `data` at `offset` and return the number of bytes written.

        Writing past the end leaves a hole of zeros. Raises ReadOnly for a
        handle opened with write=False.
        """
        opened = self._handle(handle)
        entry = opened.entry
        if not opened.writable:
            raise ReadOnly(f"upload handle {handle} of {entry.name!r} was opened read-only")

        with self._lock:
            # A writing handle keeps the worker away, so this only guards against misuse.
            if entry.state == STATE_UPLOADING:
                raise Busy(f"staged file {entry.name!r} of project {entry.project_id} is being uploaded")

        written = os.pwrite(opened.fd, data, offset)

        with self._lock:
            entry.size = max(entry.size, offset + written)
            requeued = self._mark_written(entry)

        if requeued:
            self._status.write()
        return written

    def truncate(self, project_id: str, name: str, length: int) -> None:
        """Cut or extend a staged file to `length` bytes, durably.

        Raises Busy while the file is being uploaded, NoSuchPath when no
        staged file has this name.
        """
        if length < 0:
            raise ValueError(f"length must be 0 or more, got {length}")

        entry = self._pin(project_id, name, writes=True)
        fd = self._open_data(entry, os.O_WRONLY, pinned=True)
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        except BaseException:
            self._unpin(entry, True)
            raise
        finally:
            os.close(fd)

        with self._lock:
            entry.writers -= 1
            entry.size = length
            requeued = self._mark_written(entry)
            if entry.writers == 0 and not entry.deleted:
                self._schedule(entry)

        self._persist(entry)
        logger.debug("upload %s: truncated %r to %d bytes", entry.upload_id, name, length)
        if requeued:
            self._status.write()

    def flush(self, handle: int) -> None:
        """fsync the file's data and write its metadata; return once both are durable."""
        self._sync(self._handle(handle))

    def _sync(self, opened: _Handle) -> None:
        entry = opened.entry
        with self._lock:
            needs_sync = entry.unsynced
            entry.unsynced = False

        if needs_sync:
            try:
                os.fsync(opened.fd)
            except BaseException:
                with self._lock:
                    entry.unsynced = True
                raise

        self._persist(entry)

    def release(self, handle: int) -> None:
        """Close a handle; the last writing handle of a written file schedules its upload.

        That close makes the file durable and makes its upload due at now +
        write_back. Handles opened read-only never schedule or delay an upload.
        """
        with self._lock:
            opened = self._handles.pop(handle, None)
        if opened is None:
            raise NoSuchPath(f"no open upload handle {handle}")
        entry = opened.entry

        try:
            if opened.writable:
                self._sync(opened)
        finally:
            os.close(opened.fd)
            with self._lock:
                scheduled = False
                if opened.writable:
                    entry.writers -= 1
                    if entry.writers == 0 and entry.changed and not entry.deleted:
                        self._schedule(entry)
                        scheduled = True
                self._cond.notify_all()

        logger.debug("upload %s: handle %d released", entry.upload_id, handle)
        if scheduled:
            self._status.write()

    def unlink(self, project_id: str, name: str) -> None:
        """Delete a staged file and cancel its upload.

        Open handles keep working on the deleted bytes, as on any POSIX file
        system. Raises Busy while the file is being uploaded.
        """
        with self._lock:
            self._check_open()
            entry = self._require(project_id, name)
            if entry.state == STATE_UPLOADING:
                raise Busy(f"staged file {name!r} of project {project_id} is being uploaded; try again when it is done")
            entry.deleted = True
            self._unindex(entry)
            self._cond.notify_all()

        self._delete_files(entry)
        logger.debug("upload %s: staged file %r of project %s deleted before its upload", entry.upload_id, name, project_id)
        self._status.write()

    def rename(self, project_id: str, old: str, new: str) -> None:
        """Rename a staged file within its project, replacing a staged file named `new`.

        The upload id and inode stay, so a temporary file renamed into place
        (rsync's ".name.XXXXXX") is uploaded once, under its final name. A
        failed upload is queued again. Raises Busy while either file is
        being uploaded, NoSuchPath when `old` is not staged.
        """
        with self._lock:
            self._check_open()
            entry = self._require(project_id, old)
            if entry.name == new:
                return
            if entry.state == STATE_UPLOADING:
                raise Busy(f"staged file {old!r} of project {project_id} is being uploaded under that name; try again when it is done")

            replaced = self._lookup(project_id, new)
            if replaced is entry:
                replaced = None
            if replaced is not None and replaced.state == STATE_UPLOADING:
                raise Busy(f"staged file {new!r} of project {project_id} is being uploaded; try again when it is done")

            if replaced is not None:
                replaced.deleted = True
                self._unindex(replaced)
            self._unindex(entry)
            entry.name = new
            self._index(entry)
            entry.touch_metadata()
            if self._requeue(entry):
                entry.changed = True
                if entry.writers == 0:
                    self._schedule(entry)
            self._cond.notify_all()

        # The renamed file is written before the replaced one is removed, so a
        # crash in between leaves both, and none is lost.
        self._persist(entry)
        if replaced is not None:
            self._delete_files(replaced)
            logger.debug("upload %s: staged file %r of project %s replaced by a rename", replaced.upload_id, new, project_id)

        logger.debug("upload %s: staged file %r of project %s renamed to %r", entry.upload_id, old, project_id, new)
        self._status.write()

    def set_mtime(self, project_id: str, name: str, mtime_ns: int) -> None:
        """Set the staged file's mtime, which the attachment shows after its upload; durable on return."""
        with self._lock:
            entry = self._require(project_id, name)
            entry.mtime_ns = int(mtime_ns)
            entry.touch_metadata()

        self._persist(entry)
        logger.debug("upload %s: mtime of %r set to %d ns", entry.upload_id, name, mtime_ns)
        self._status.write()

    # -- worker ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread; call it after libfuse forked, from the FUSE init callback.

        Uploads that failed in an earlier process are queued once more, so
        a new mount retries each of them one time. The pid in the spool's
        lock file and in the status file is written again here, because a
        fork since the constructor changed it.
        """
        with self._lock:
            if self._closed:
                raise ReadOnly(f"upload spool {self.spool.directory} is closed; the worker cannot start")
            if self._worker is not None:
                return

            self.spool.write_pid()
            requeued = [entry for entry in self._entries.values() if self._requeue(entry, "by a new mount")]
            for entry in requeued:
                entry.due = time.monotonic()

            self._worker = threading.Thread(target=self._run, name="rayfs-uploads", daemon=True)
            self._worker.start()
            count = len(self._entries)

        for entry in requeued:
            self._persist(entry)
        self._status.write()
        logger.info(
            "upload worker started: spool %s, %d staged files, %d of them failed in an earlier mount and are retried",
            self.spool.directory, count, len(requeued),
        )

    def _run(self) -> None:
        while True:
            entry = self._next_upload()
            if entry is None:
                logger.debug("upload worker stopped")
                return

            try:
                self._upload(entry)
            except Exception as exc:
                # A bug here must not stop the uploads of the other files.
                logger.exception(
                    "upload %s of %r to project %s: unexpected error in the upload worker",
                    entry.upload_id, entry.name, entry.project_id,
                )
                self._record_failure(entry, state=STATE_STAGED, reason=describe(exc), error=exc)
            finally:
                self._end_attempt()

    def _next_upload(self) -> StagedEntry | None:
        """Wait for the next due file, mark it uploading and return it; None once the manager stops."""
        with self._cond:
            while True:
                if self._stopping:
                    return None

                entry, wait = self._pick_due(time.monotonic())
                if entry is not None:
                    entry.state = STATE_UPLOADING
                    entry.sent = 0
                    entry.attempts += 1
                    entry.touch_metadata()
                    self._current = entry
                    return entry
                self._cond.wait(wait)

    def _pick_due(self, now: float) -> tuple[StagedEntry | None, float | None]:
        """Return the oldest file ready to upload, or None and the seconds until one may be ready.

        A file is ready when it is staged, has no writing handle, its retry
        backoff is over and its write-back delay has passed, or wait_idle
        is running. The caller holds _lock.
        """
        wait = None
        for entry in self._entries.values():
            if entry.state != STATE_STAGED or entry.writers or is_temporary_name(entry.name):
                continue

            ready_at = entry.retry_at if self._urgent else max(entry.retry_at, entry.due)
            if ready_at <= now:
                return entry, None
            wait = ready_at - now if wait is None else min(wait, ready_at - now)
        return None, wait

    def _upload(self, entry: StagedEntry) -> None:
        """Send one file and record the outcome; the caller then ends the attempt."""
        with self._lock:
            project_id, name, size, attempt = entry.project_id, entry.name, entry.size, entry.attempts
        self._persist(entry)
        self._status.write()

        data_path = self.spool.data_path(entry.upload_id)
        logger.info(
            "upload %s: sending %r (%d bytes) to project %s, attempt %d", entry.upload_id, name, size, project_id, attempt,
        )

        def progress(sent: int) -> None:
            entry.sent = sent
            if self._abort:
                raise _UploadCancelled()
            self._status.write_progress()

        try:
            attachment = self._api.upload_attachment(project_id, data_path, name, progress=progress)
        except _UploadCancelled:
            logger.info(
                "upload %s of %r to project %s stopped because the upload manager is closing; it stays in the spool",
                entry.upload_id, name, project_id,
            )
            self._record_failure(entry, state=STATE_STAGED, reason="", error=None)
        except Exception as exc:
            self._upload_failed(entry, exc)
        else:
            self._upload_succeeded(entry, attachment)

    def _end_attempt(self) -> None:
        """Publish the outcome in the status file, then mark the worker idle, which lets wait_idle return."""
        self._status.write()
        with self._lock:
            self._current = None
            self._cond.notify_all()

    def _record_failure(self, entry: StagedEntry, *, state: str, reason: str, error: BaseException | None) -> float:
        """Record an attempt that did not upload the file; return the retry delay in seconds.

        With `error` set and `state` "staged" the retry waits for a backoff delay.
        """
        delay = 0.0
        with self._lock:
            entry.state = state
            entry.reason = reason
            entry.sent = 0
            if error is not None and state == STATE_STAGED:
                entry.failures += 1
                delay = backoff_delay(entry.failures, error, self._backoff_base, self._backoff_max)
                entry.retry_at = time.monotonic() + delay
            entry.touch_metadata()

        self._persist(entry)
        return delay

    def _upload_failed(self, entry: StagedEntry, error: Exception) -> None:
        reason = describe(error)

        if not is_permanent(error):
            delay = self._record_failure(entry, state=STATE_STAGED, reason=reason, error=error)
            logger.info(
                "upload %s of %r to project %s failed, retry %d in %.1f s: %s",
                entry.upload_id, entry.name, entry.project_id, entry.failures, delay, error,
            )
            return

        self._record_failure(entry, state=STATE_FAILED, reason=reason, error=error)
        logger.error(
            "upload %s of %r (%d bytes) to project %s failed and is not retried until the file changes; "
            "its bytes stay in %s: %s",
            entry.upload_id, entry.name, entry.size, entry.project_id, self.spool.data_path(entry.upload_id), error,
            # An error from outside the API client is unexpected, so its traceback is logged too.
            exc_info=error if not isinstance(error, (RayfsError, OSError)) else None,
        )

    def _upload_succeeded(self, entry: StagedEntry, attachment: Attachment) -> None:
        """Store the mtime, call on_uploaded, then remove the spool files.

        The entry leaves the index before `on_uploaded` runs, so a listing
        refreshed there shows the attachment once. wait_idle returns only
        after the spool files are gone, because the attempt ends after this.
        """
        with self._lock:
            entry.sent = entry.size
            staged = entry.snapshot()
            mtime_ns = entry.mtime_ns
            entry.deleted = True
            self._unindex(entry)

        logger.info(
            "upload %s: uploaded %r (%d bytes) to project %s as sk %s",
            entry.upload_id, staged.name, staged.size, staged.project_id, attachment.sk,
        )

        try:
            self._mtimes.set(staged.project_id, attachment.sk, mtime_ns)
        except Exception as exc:
            logger.warning(
                "upload %s: cannot store the mtime of project %s sk %s, so the attachment shows its upload time: %s",
                entry.upload_id, staged.project_id, attachment.sk, exc,
            )

        if self._on_uploaded is not None:
            try:
                self._on_uploaded(staged, attachment)
            except Exception:
                logger.exception("upload %s: on_uploaded failed for project %s sk %s", entry.upload_id, staged.project_id, attachment.sk)

        try:
            self._delete_files(entry)
        except OSError as exc:
            # NOTE: the next mount finds the JSON file and uploads the file a second time.
            logger.error("upload %s: cannot remove the spool files of uploaded %r: %s", entry.upload_id, staged.name, exc)

    # -- waiting and closing -----------------------------------------------------------

    def wait_idle(
        self,
        progress: Callable[[list[StagedFile]], None] | None = None,
        *,
        include_failed: bool = False,
    ) -> None:
        """Upload every staged file now, skipping the write-back delay, and return when none is staged or uploading.

        Retry backoff still applies, so this waits as long as the server
        keeps failing, and files held open for writing are uploaded once
        closed. `include_failed` queues failed uploads again first; those
        that fail again do not keep this waiting. `progress` is called with
        `pending()` at the start and about once a second. Starts the worker
        if `start()` has not run.
        """
        if include_failed:
            with self._lock:
                requeued = [entry for entry in self._entries.values() if self._requeue(entry, "by wait_idle")]
            for entry in requeued:
                self._persist(entry)
            if requeued:
                self._status.write()

        self.start()
        with self._lock:
            self._urgent += 1
            self._cond.notify_all()

        try:
            next_report = time.monotonic()
            while True:
                if progress is not None and time.monotonic() >= next_report:
                    progress(self.pending())
                    next_report = time.monotonic() + PROGRESS_INTERVAL

                with self._lock:
                    if not self._busy():
                        return
                    if self._worker is None or not self._worker.is_alive():
                        raise RuntimeError(f"the upload worker of spool {self.spool.directory} stopped with uploads pending")
                    self._cond.wait(PROGRESS_INTERVAL if progress is None else max(0.0, next_report - time.monotonic()))
        finally:
            with self._lock:
                self._urgent -= 1

    def _busy(self) -> bool:
        """Return True while a file is staged or uploading; the caller holds _lock."""
        if self._current is not None:
            return True
        return any(
            entry.state != STATE_FAILED and not is_temporary_name(entry.name) for entry in self._entries.values()
        )

    def close(self, *, wait: bool) -> None:
        """Stop the worker and release the spool's lock.

        wait=True first runs wait_idle. wait=False lets the upload in flight
        stop at its next block, or finish if its body is already sent, and
        leaves every other file in the spool for the next mount. Open
        handles are fsync'd and closed.
        """
        with self._lock:
            if self._closed:
                return
        if wait:
            self.wait_idle()

        with self._lock:
            self._stopping = True
            self._abort = not wait
            self._cond.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(CLOSE_JOIN_TIMEOUT)
        worker_running = worker is not None and worker.is_alive()

        with self._lock:
            self._closed = True
            handles = list(self._handles.values())
            self._handles.clear()
            entries = list(self._entries.values())

        for opened in handles:
            try:
                self._sync(opened)
            finally:
                os.close(opened.fd)
        for entry in entries:
            self._persist(entry)
        self._status.write()

        if worker_running:
            # Keeping the lock stops another mount from sending the same file while this one may still be sending it.
            logger.warning(
                "upload worker did not stop within %.0f s; the spool %s stays locked until this process exits",
                CLOSE_JOIN_TIMEOUT, self.spool.directory,
            )
        else:
            self.spool.unlock()
        logger.info("upload manager closed; staged files left in the spool %s: %d", self.spool.directory, len(entries))
