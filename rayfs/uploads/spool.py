"""The on-disk staging area of uploads and its lock.

Each staged file is `<upload_id>.data`, the bytes, and `<upload_id>.json`,
its metadata. The JSON file is written first and removed first, so a data
file without a JSON file can only be left by a crash while a staged file was
removed, after its upload or because the user deleted it. The `lock` file
carries an exclusive `flock` and the pid of the process that locked it, so
two mounts never upload from one spool.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from rayfs.errors import SpoolLocked
from rayfs.uploads.staged import STATE_STAGED, STATE_UPLOADING, STATES, StagedEntry

logger = logging.getLogger(__name__)

LOCK_NAME = "lock"
DATA_SUFFIX = ".data"
META_SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"
UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def new_upload_id() -> str:
    """Return a new random upload id: 32 lowercase hex digits."""
    return uuid.uuid4().hex


def fsync_directory(path: Path) -> None:
    """fsync a directory, which makes the renames and removals in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, document: Any, *, durable: bool = True, temp_path: Path | None = None) -> None:
    """Replace `path` with `document` as UTF-8 JSON, so readers see the old or the new file, never a mix.

    With `durable` the temporary file and then the directory are fsync'd,
    so the new content survives a power loss once this returns.
    """
    temp_path = temp_path or path.with_name(path.name + TEMP_SUFFIX)
    payload = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"

    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)

    os.replace(temp_path, path)
    if durable:
        fsync_directory(path.parent)


class Spool:
    """The spool folder: creates it with mode 0700 and takes its lock."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock_fd: int | None = None

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            os.chmod(self.directory, 0o700)
            logger.info("upload spool %s: restricted the mode to 0700", self.directory)

        self._lock()

    # -- lock ----------------------------------------------------------------

    def _lock(self) -> None:
        """Take the exclusive lock and write our pid, or raise SpoolLocked naming the holder."""
        lock_path = self.directory / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise SpoolLocked(
                f"upload spool {self.directory} is in use by another rayfs mount (pid {holder}): "
                f"stop that mount or pass --spool-dir"
            ) from exc

        self._lock_fd = fd
        self.write_pid()
        logger.debug("upload spool %s: locked by pid %d", self.directory, os.getpid())

    def write_pid(self) -> None:
        """Write the current pid into the lock file; call it again after a fork."""
        if self._lock_fd is None:
            return
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def unlock(self) -> None:
        """Release the lock. The lock file stays, because removing it would race with a new holder."""
        if self._lock_fd is None:
            return
        os.close(self._lock_fd)
        self._lock_fd = None
        logger.debug("upload spool %s: unlocked", self.directory)

    # -- files ---------------------------------------------------------------

    def data_path(self, upload_id: str) -> Path:
        return self.directory / (upload_id + DATA_SUFFIX)

    def meta_path(self, upload_id: str) -> Path:
        return self.directory / (upload_id + META_SUFFIX)

    def create_data(self, upload_id: str) -> None:
        """Create the empty data file of a new upload and make its directory entry durable."""
        fd = os.open(self.data_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        fsync_directory(self.directory)

    def write_metadata(self, upload_id: str, metadata: dict[str, Any]) -> None:
        write_json_atomic(self.meta_path(upload_id), metadata)

    def delete(self, upload_id: str) -> None:
        """Remove an upload's JSON file, then its data file, durably."""
        for path in (self.meta_path(upload_id), self.data_path(upload_id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fsync_directory(self.directory)

    # -- recovery ------------------------------------------------------------

    def recover(self) -> list[StagedEntry]:
        """Load the staged files an earlier process left, oldest first.

        An upload that was in flight becomes "staged" again and a failed one
        stays failed. Size and mtime come from the data file when it was
        written after the JSON file, which happens when a process died before
        it wrote the metadata of its last writes. Files that cannot be read
        are left in place with an ERROR, never deleted.
        """
        entries = []
        names = sorted(os.listdir(self.directory))
        name_set = set(names)

        for name in names:
            if name.endswith(TEMP_SUFFIX):
                self._remove_temp(name)
            elif name.endswith(META_SUFFIX) and UPLOAD_ID_PATTERN.match(name[: -len(META_SUFFIX)]):
                entry = self._load_entry(name[: -len(META_SUFFIX)])
                if entry is not None:
                    entries.append(entry)
            elif name.endswith(DATA_SUFFIX) and name[: -len(DATA_SUFFIX)] + META_SUFFIX not in name_set:
                logger.warning(
                    "upload spool %s: data file %s has no metadata, because the previous process stopped while "
                    "removing it after its upload or deletion; it is kept but not uploaded again",
                    self.directory, name,
                )

        entries.sort(key=lambda entry: (entry.created_ms, entry.upload_id))
        return entries

    def _remove_temp(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except FileNotFoundError:
            pass
        logger.debug("upload spool %s: removed the unfinished temporary file %s", self.directory, name)

    def _load_entry(self, upload_id: str) -> StagedEntry | None:
        meta_path = self.meta_path(upload_id)
        data_path = self.data_path(upload_id)

        try:
            metadata = json.loads(meta_path.read_bytes())
            meta_stat = meta_path.stat()
        except (OSError, ValueError) as exc:
            logger.error("upload spool %s: cannot read %s, left in place: %s", self.directory, meta_path.name, exc)
            return None

        try:
            data_stat = data_path.stat()
        except FileNotFoundError:
            # create() writes the JSON file before the data file, so the process
            # died inside create() and the user never got a handle on the file.
            logger.warning("upload spool %s: upload %s has no data file; dropping its metadata", self.directory, upload_id)
            os.unlink(meta_path)
            return None

        entry = _entry_from_metadata(upload_id, metadata)
        if entry is None:
            logger.error(
                "upload spool %s: %s is not valid upload metadata, left in place: %.200r",
                self.directory, meta_path.name, metadata,
            )
            return None

        if entry.state == STATE_UPLOADING:
            # NOTE: the server may have stored the file before the process
            # stopped, in which case it is uploaded a second time.
            logger.info(
                "upload %s of %r to project %s was in flight when the previous process stopped; it will be sent again",
                upload_id, entry.name, entry.project_id,
            )
            entry.state = STATE_STAGED

        entry.size = data_stat.st_size
        if data_stat.st_mtime_ns > meta_stat.st_mtime_ns:
            entry.mtime_ns = data_stat.st_mtime_ns

        if entry.metadata() != metadata:
            entry.touch_metadata()
        else:
            entry.persisted_version = entry.version
        entry.due = time.monotonic() if entry.state == STATE_STAGED else float("inf")

        logger.info(
            "recovered upload %s: %r for project %s, %d bytes, %s",
            upload_id, entry.name, entry.project_id, entry.size, entry.state,
        )
        return entry


def _entry_from_metadata(upload_id: str, metadata: Any) -> StagedEntry | None:
    """Build an entry from a JSON file's object, or return None when a field is missing or of the wrong type."""
    if not isinstance(metadata, dict):
        return None

    project_id = metadata.get("project_id")
    name = metadata.get("name")
    state = metadata.get("state")
    if not isinstance(project_id, str) or not project_id or not isinstance(name, str) or not name:
        return None
    if state not in STATES:
        return None

    numbers = {key: metadata.get(key, 0) for key in ("size", "mtime_ns", "created", "attempts")}
    if any(isinstance(value, bool) or not isinstance(value, int) for value in numbers.values()):
        return None
    reason = metadata.get("reason", "")

    return StagedEntry(
        upload_id=upload_id,
        project_id=project_id,
        name=name,
        size=numbers["size"],
        mtime_ns=numbers["mtime_ns"],
        created_ms=numbers["created"],
        state=state,
        reason=reason if isinstance(reason, str) else "",
        attempts=numbers["attempts"],
    )

