"""The modification times users set on files before they were uploaded.

The API stores no mtime: an uploaded attachment's `created` is the time of
the upload. `rsync -a` and `cp -p` set the mtime they want on the staged
file, and the mount shows that time for the attachment afterwards, so
`rsync -a` finds nothing to copy on its next run. The times live in a SQLite
file next to the spool, keyed by project id and the attachment's `sk`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS mtimes (
    project_id TEXT NOT NULL,
    sk TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (project_id, sk)
)
"""


class MtimeStore:
    """Mtimes of uploaded attachments in the SQLite file `path`; survives remounts, thread-safe.

    The database is opened on first use and opened again in a forked child,
    because a SQLite connection must not cross a fork and libfuse forks
    when it goes to the background.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        """Return the connection of this process; the caller holds the lock."""
        if self._closed:
            raise ValueError(f"mtime store {self.path} is closed")
        if self._connection is not None and self._pid == os.getpid():
            return self._connection

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(SCHEMA)

        self._connection = connection
        self._pid = os.getpid()
        logger.debug("mtime store %s opened", self.path)
        return connection

    def get(self, project_id: str, sk: str) -> int | None:
        """Return the mtime in nanoseconds set on the attachment `sk` before its upload, or None."""
        with self._lock:
            row = self._connect().execute(
                "SELECT mtime_ns FROM mtimes WHERE project_id = ? AND sk = ?", (project_id, sk)
            ).fetchone()
        return None if row is None else int(row[0])

    def set(self, project_id: str, sk: str, mtime_ns: int) -> None:
        """Store the mtime in nanoseconds of the attachment `sk`, replacing an earlier one."""
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO mtimes (project_id, sk, mtime_ns) VALUES (?, ?, ?)",
                (project_id, sk, int(mtime_ns)),
            )
        logger.debug("mtime store: project %s sk %s mtime_ns %d", project_id, sk, mtime_ns)

    def close(self) -> None:
        """Close the database; later calls raise ValueError."""
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None
            self._closed = True
