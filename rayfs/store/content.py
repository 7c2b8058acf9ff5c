"""On-disk cache of attachment bytes, kept in fixed-size blocks.

Attachments never change on the server, so cached bytes never go stale: a
block, once fetched, is served from disk until the cache is full and the
attachment is evicted (least recently used first).

Each attachment has a sparse data file and a block map (one byte per block,
1 when present). The map in memory is authoritative while the mount runs. On
`flush` the data is fsync'd first and the map written after it. So after a
crash the map on disk never claims bytes that did not reach the disk.

Caveats:
- Readers of one attachment take turns (one lock per attachment), so two
  threads reading far-apart parts of one file wait for each other's fetches.
- Read-ahead is synchronous: the read that finds a block missing waits for
  the whole read-ahead run, and nothing is fetched while cached blocks are
  served. A background fetcher would overlap the two.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

logger = logging.getLogger(__name__)

BLOCK_SIZE = 128 * 1024
PRESENT = 1

# fetch(offset, length) returns the bytes from `offset` as an iterable of chunks,
# so a large read-ahead is written to disk as it arrives, never held whole.
Fetch = Callable[[int, int], Iterable[bytes]]


class _Item:
    """The open state of one cached attachment."""

    def __init__(self, data_path: Path, map_path: Path, size: int):
        self.data_path = data_path
        self.map_path = map_path
        self.size = size
        self.lock = threading.Lock()
        self.blocks = bytearray(block_count(size))
        self.dirty = False
        self.last_used = time.monotonic()
        self.fd: int | None = None

    def present_bytes(self) -> int:
        return self.blocks.count(PRESENT) * BLOCK_SIZE


def block_count(size: int) -> int:
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


class ContentCache:
    """Caches byte ranges of attachments under `root`, using at most about `max_bytes` of disk."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: dict[str, _Item] = {}
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._used = self._scan_used_bytes()

    def read(self, key: str, size: int, offset: int, length: int, fetch: Fetch, *, readahead: int = 0) -> bytes:
        """Return `length` bytes at `offset` of the attachment `key` of `size` bytes.

        Missing blocks are fetched with `fetch(offset, length)`, one call per
        run of adjacent missing blocks, and written to disk chunk by chunk. Up to `readahead` bytes after the
        requested range are fetched in the same call when they are missing.
        """
        end = min(offset + length, size)
        if offset >= end:
            return b""

        item = self._item(key, size)
        with item.lock:
            first = offset // BLOCK_SIZE
            last = (end - 1) // BLOCK_SIZE
            ahead = min(block_count(size) - 1, (end + readahead - 1) // BLOCK_SIZE)
            for start_block, stop_block in missing_runs(item.blocks, first, last, ahead):
                self._fill(key, item, start_block, stop_block, fetch)

            item.last_used = time.monotonic()
            return os.pread(self._fd(item), end - offset, offset)

    def flush(self, key: str | None = None) -> None:
        """Write the block maps of `key` (or of every attachment) to disk, after their data."""
        with self._lock:
            items = list(self._items.items()) if key is None else [(key, self._items.get(key))]

        for item_key, item in items:
            if item is None:
                continue
            with item.lock:
                self._persist(item_key, item)

    def close(self) -> None:
        """Flush every block map and close the data files."""
        self.flush()
        with self._lock:
            for item in self._items.values():
                with item.lock:
                    if item.fd is not None:
                        os.close(item.fd)
                        item.fd = None
            self._items.clear()

    # Internals

    def _item(self, key: str, size: int) -> _Item:
        with self._lock:
            item = self._items.get(key)
            if item is not None and item.size == size:
                return item

            folder = self.root / key[:2]
            folder.mkdir(exist_ok=True, mode=0o700)
            item = _Item(folder / f"{key}.data", folder / f"{key}.map", size)
            try:
                saved = item.map_path.read_bytes()
            except FileNotFoundError:
                saved = b""
            if len(saved) == len(item.blocks) and item.data_path.exists():
                item.blocks[:] = saved
            self._items[key] = item
            return item

    def _fd(self, item: _Item) -> int:
        if item.fd is None:
            item.fd = os.open(item.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        return item.fd

    def _fill(self, key: str, item: _Item, start_block: int, stop_block: int, fetch: Fetch) -> None:
        start = start_block * BLOCK_SIZE
        stop = min((stop_block + 1) * BLOCK_SIZE, item.size)
        fd = self._fd(item)

        position = start
        try:
            for chunk in fetch(start, stop - start):
                chunk = chunk[: stop - position]
                os.pwrite(fd, chunk, position)
                position += len(chunk)
                if position >= stop:
                    break
        finally:
            # Mark only blocks that arrived whole (the last block of the file may be short),
            # also when the fetch failed part-way, so the next read resumes after them.
            self._mark_present(item, start_block, stop_block, position)
            with self._lock:
                self._used += position - start

        if position != stop:
            logger.warning(
                "attachment cache %s: expected %d bytes at offset %d, got %d; the server file is shorter than its record",
                key,
                stop - start,
                start,
                position - start,
            )
        self._evict_if_full(keep=key)

    def _mark_present(self, item: _Item, start_block: int, stop_block: int, arrived_end: int) -> None:
        for block in range(start_block, stop_block + 1):
            block_end = min((block + 1) * BLOCK_SIZE, item.size)
            if arrived_end >= block_end:
                item.blocks[block] = PRESENT
                item.dirty = True

    def _persist(self, key: str, item: _Item) -> None:
        if not item.dirty or item.fd is None:
            return
        os.fdatasync(item.fd)
        temporary = item.map_path.with_suffix(".map.tmp")
        temporary.write_bytes(bytes(item.blocks))
        os.replace(temporary, item.map_path)
        item.dirty = False
        logger.debug("attachment cache %s: saved block map", key)

    def _evict_if_full(self, *, keep: str) -> None:
        with self._lock:
            if self._used <= self.max_bytes:
                return
            victims = sorted(
                (item.last_used, key, item) for key, item in self._items.items() if key != keep
            )

        for _, key, item in victims:
            if not item.lock.acquire(blocking=False):
                continue
            try:
                freed = item.present_bytes()
                if item.fd is not None:
                    os.close(item.fd)
                    item.fd = None
                for path in (item.map_path, item.data_path):
                    path.unlink(missing_ok=True)
                item.blocks[:] = bytes(len(item.blocks))
                item.dirty = False
            finally:
                item.lock.release()

            with self._lock:
                self._items.pop(key, None)
                self._used = max(0, self._used - freed)
                logger.info("attachment cache: evicted %s (%d bytes) to stay under %d bytes", key, freed, self.max_bytes)
                if self._used <= self.max_bytes:
                    return

        self._evict_unopened()

    def _evict_unopened(self) -> None:
        """Remove cached attachments of earlier mounts, oldest first, while the cache is over its limit."""
        with self._lock:
            open_keys = set(self._items)
        maps = sorted(self.root.glob("*/*.map"), key=lambda path: path.stat().st_mtime)

        for map_path in maps:
            key = map_path.stem
            if key in open_keys:
                continue
            freed = map_path.read_bytes().count(PRESENT) * BLOCK_SIZE
            map_path.unlink(missing_ok=True)
            map_path.with_suffix(".data").unlink(missing_ok=True)
            with self._lock:
                self._used = max(0, self._used - freed)
                if self._used <= self.max_bytes:
                    return

    def _scan_used_bytes(self) -> int:
        used = 0
        for map_path in self.root.glob("*/*.map"):
            try:
                used += map_path.read_bytes().count(PRESENT) * BLOCK_SIZE
            except OSError:
                continue
        return used


def missing_runs(blocks: bytearray, first: int, last: int, ahead: int) -> list[tuple[int, int]]:
    """Return runs `(start, stop)` of missing blocks to fetch for a read of blocks `first..last`.

    When the read itself needs a fetch, missing blocks right after `last`, up
    to `ahead`, join the final run: read-ahead then arrives in large requests,
    and a read served wholly from the cache never waits for one.
    """
    runs: list[tuple[int, int]] = []
    block = first
    while block <= last:
        if blocks[block] == PRESENT:
            block += 1
            continue
        start = block
        while block <= last and blocks[block] != PRESENT:
            block += 1
        runs.append((start, block - 1))

    if runs and runs[-1][1] == last:
        stop = last
        while stop < ahead and blocks[stop + 1] != PRESENT:
            stop += 1
        runs[-1] = (runs[-1][0], stop)
    return runs
