"""SQLite store of the emulator: one row per `(_id, sk)` record.

Each row keeps the record's JSON text exactly as it was given (key order and
non-ASCII characters intact), so responses repeat it byte for byte. The row id
fixes the server order, which is insertion order. Replacing a record keeps its
place in that order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

DB_FILENAME = "emulator.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL,
    sk TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (project_id, sk)
);
CREATE INDEX IF NOT EXISTS records_by_sk ON records (sk, seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def encode_record(record: dict[str, Any]) -> str:
    """Serialize a record as compact JSON that keeps key order and non-ASCII text."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class RecordStore:
    """Records of all projects in `DATA_DIR/emulator.sqlite3`.

    Safe to call from several threads: one connection guarded by a lock.
    Every call is short, so the event loop calls it directly.
    """

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, DB_FILENAME)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def count(self) -> int:
        with self._lock:
            (total,) = self._connection.execute("SELECT COUNT(*) FROM records").fetchone()
        return total

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def upsert(self, records: Iterable[dict[str, Any]]) -> int:
        """Insert or replace records in one transaction; returns how many were written.

        Every record needs string `_id` and `sk` fields. A replaced record keeps
        its position in the server order.
        """
        rows = []
        for record in records:
            project_id = record.get("_id")
            sk = record.get("sk")
            if not isinstance(project_id, str) or not isinstance(sk, str):
                raise ValueError(f"invalid record: _id and sk must be strings, got _id={project_id!r} sk={sk!r}")
            rows.append((project_id, sk, encode_record(record)))

        with self._lock:
            with self._connection:
                self._connection.execute("BEGIN")
                self._connection.executemany(
                    "INSERT INTO records (project_id, sk, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (project_id, sk) DO UPDATE SET body = excluded.body",
                    rows,
                )
        return len(rows)

    def insert_new(self, record: dict[str, Any]) -> bool:
        """Insert a record unless its `(_id, sk)` exists; returns whether it was inserted."""
        with self._lock:
            cursor = self._connection.execute(
                "INSERT INTO records (project_id, sk, body) VALUES (?, ?, ?) ON CONFLICT (project_id, sk) DO NOTHING",
                (record["_id"], record["sk"], encode_record(record)),
            )
        return cursor.rowcount == 1

    def project_infos(self) -> list[str]:
        """Return the JSON text of every record with sk "project", in server order."""
        with self._lock:
            rows = self._connection.execute("SELECT body FROM records WHERE sk = 'project' ORDER BY seq").fetchall()
        return [body for (body,) in rows]

    def project_records(self, project_id: str, sk_prefix: str = "") -> list[str]:
        """Return the JSON text of a project's records whose sk starts with `sk_prefix`."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT sk, body FROM records WHERE project_id = ? ORDER BY seq", (project_id,)
            ).fetchall()
        return [body for (sk, body) in rows if sk.startswith(sk_prefix)]

    def get(self, project_id: str, sk: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT body FROM records WHERE project_id = ? AND sk = ?", (project_id, sk)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def exists(self, project_id: str, sk: str) -> bool:
        with self._lock:
            row = self._connection.execute(
                "SELECT 1 FROM records WHERE project_id = ? AND sk = ?", (project_id, sk)
            ).fetchone()
        return row is not None

    def all_records(self) -> list[dict[str, Any]]:
        """Return every record in server order."""
        with self._lock:
            rows = self._connection.execute("SELECT body FROM records ORDER BY seq").fetchall()
        return [json.loads(body) for (body,) in rows]


def attachment_filename(project_id: str, sk: str) -> str:
    """Return the file name under `DATA_DIR/files/` that contains an attachment's bytes.

    A hash keeps any `_id` and `sk`, however odd, a safe file name.
    """
    digest = hashlib.sha256(f"{project_id}\x00{sk}".encode("utf-8")).hexdigest()
    return f"{digest}.bin"
