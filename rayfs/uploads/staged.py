"""Staged files: the public snapshot and the manager's mutable record of each file."""

from __future__ import annotations

import hashlib
import re
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

STATE_STAGED = "staged"
STATE_UPLOADING = "uploading"
STATE_FAILED = "failed"
STATES = (STATE_STAGED, STATE_UPLOADING, STATE_FAILED)

# Inode numbers 0 and 1 mean "no inode" and "the mount's root" to FUSE.
MIN_INODE = 2

# rsync writes into ".NAME.XXXXXX" and renames it to NAME when the copy is complete.
RSYNC_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9]{6}$", re.DOTALL)


def is_temporary_name(name: str) -> bool:
    """Return True for rsync's temporary file names, which are held back until renamed.

    An rsync that dies mid-copy leaves such a file behind. Uploading it would
    make a partial copy a permanent attachment, so it stays in the spool
    until it is renamed (then it uploads) or deleted.
    """
    return bool(RSYNC_TEMPORARY_NAME.match(name))


def inode_for(upload_id: str) -> int:
    """Return the stable 63-bit inode number of an upload, from the SHA-256 of its id."""
    digest = hashlib.sha256(upload_id.encode("utf-8")).digest()
    inode = int.from_bytes(digest[:8], "big") >> 1
    return inode if inode >= MIN_INODE else inode + MIN_INODE


@dataclass(frozen=True)
class StagedFile:
    """A snapshot of one staged file, safe to hand to other threads.

    `state` is "staged", "uploading" or "failed". `reason` is why the upload
    failed, or the error of the last attempt that will be retried, and ""
    otherwise. `sent` counts the file bytes sent in the current attempt, and
    is 0 unless the file is uploading.
    """

    upload_id: str
    project_id: str
    name: str
    size: int
    mtime_ns: int
    state: str
    reason: str
    sent: int
    inode: int


@dataclass(eq=False)
class StagedEntry:
    """The manager's record of one staged file.

    The manager's lock guards every field except `persist_lock`, which orders
    the writes of this entry's JSON file. Times in `due` and `retry_at` are
    `time.monotonic()` seconds.
    """

    upload_id: str
    project_id: str
    name: str
    size: int
    mtime_ns: int
    created_ms: int
    state: str = STATE_STAGED
    reason: str = ""
    attempts: int = 0
    sent: int = 0

    # When the write-back delay ends; infinity until the file is first closed.
    due: float = float("inf")
    # When the next attempt after a failed one may start.
    retry_at: float = 0.0
    # Failed attempts since the last success or change, for the backoff.
    failures: int = 0

    # Handles open for writing plus operations that change the file without a handle.
    writers: int = 0
    # Written since its upload was last scheduled.
    changed: bool = False
    # Written since the data file was last fsync'd.
    unsynced: bool = False
    deleted: bool = False

    # Bumped on every change of the JSON fields; `persisted_version` is what is on disk.
    version: int = 0
    persisted_version: int = -1
    persist_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def inode(self) -> int:
        return inode_for(self.upload_id)

    def touch_metadata(self) -> None:
        """Record that a field of the JSON file changed."""
        self.version += 1

    def snapshot(self) -> StagedFile:
        return StagedFile(
            upload_id=self.upload_id,
            project_id=self.project_id,
            name=self.name,
            size=self.size,
            mtime_ns=self.mtime_ns,
            state=self.state,
            reason=self.reason,
            sent=self.sent,
            inode=self.inode,
        )

    def metadata(self) -> dict[str, Any]:
        """Return the fields stored in the entry's JSON file."""
        return {
            "project_id": self.project_id,
            "name": self.name,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "state": self.state,
            "reason": self.reason,
            "created": self.created_ms,
            "attempts": self.attempts,
        }
