"""The status file: pending uploads as JSON, read by `rayfs status` and `rayfs unmount`.

Its content is `{"pid": ..., "spool": "...", "uploads": [{"project_id",
"name", "size", "sent", "state", "reason", "mtime_ns"}]}`. It is replaced
atomically, so a reader in another process never reads half a file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from rayfs.uploads.spool import write_json_atomic
from rayfs.uploads.staged import StagedFile

logger = logging.getLogger(__name__)

# Minimum seconds between two writes that only report progress.
PROGRESS_INTERVAL = 1.0


class StatusFile:
    """Writes the status file at `path`, if one was given, from snapshots that `source` returns.

    `source` is called inside this object's lock, so concurrent writers
    store their snapshots in the order they took them.
    """

    def __init__(self, path: Path | None, spool_dir: Path, source: Callable[[], list[StagedFile]]):
        self.path = Path(path) if path is not None else None
        self.spool_dir = spool_dir
        self._source = source
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._failed_writes = 0

    def write(self) -> None:
        """Write the current state now; for state changes."""
        if self.path is None:
            return
        with self._lock:
            self._write_locked()

    def write_progress(self) -> None:
        """Write the current state unless the last write was less than PROGRESS_INTERVAL ago."""
        if self.path is None or time.monotonic() - self._last_write < PROGRESS_INTERVAL:
            return
        with self._lock:
            if time.monotonic() - self._last_write >= PROGRESS_INTERVAL:
                self._write_locked()

    def _write_locked(self) -> None:
        assert self.path is not None
        document = {
            "pid": os.getpid(),
            "spool": str(self.spool_dir),
            "uploads": [
                {
                    "project_id": staged.project_id,
                    "name": staged.name,
                    "size": staged.size,
                    "sent": staged.sent,
                    "state": staged.state,
                    "reason": staged.reason,
                    "mtime_ns": staged.mtime_ns,
                }
                for staged in self._source()
            ],
        }
        temp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_json_atomic(self.path, document, durable=False, temp_path=temp_path)
        except OSError as exc:
            # The status file only informs other commands, so uploads go on without it.
            self._failed_writes += 1
            if self._failed_writes == 1 or self._failed_writes % 100 == 0:
                logger.warning("cannot write the upload status file %s (%d failures): %s", self.path, self._failed_writes, exc)
            return
        finally:
            self._last_write = time.monotonic()

        logger.debug("upload status file %s: %d uploads", self.path, len(document["uploads"]))
