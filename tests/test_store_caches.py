"""The store's caches on their own: TTL, single flight, stale fallback and the block cache."""

from __future__ import annotations

import os
import threading
import time

import pytest

from rayfs.errors import AuthError, ServerError
from rayfs.store.content import BLOCK_SIZE, ContentCache, missing_runs
from rayfs.store.metadata import MetadataCache


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fresh_value_is_not_fetched_again():
    clock = Clock()
    cache = MetadataCache(60, timer=clock)
    calls = []
    cache.get("k", lambda: calls.append(1) or "v1")
    assert cache.get("k", lambda: calls.append(1) or "v2") == "v1"
    assert len(calls) == 1


def wait_for(condition) -> None:
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("the background refresh did not finish")


def test_expired_value_served_while_refreshing():
    clock = Clock()
    cache = MetadataCache(60, timer=clock)
    cache.get("k", lambda: "v1")
    clock.now += 61

    assert cache.get("k", lambda: "v2") == "v1"
    wait_for(lambda: cache.get("k", lambda: "v3") == "v2")


def test_failed_refresh_keeps_stale_value():
    clock = Clock()
    cache = MetadataCache(60, timer=clock)
    cache.get("k", lambda: "v1")
    clock.now += 61
    calls = []

    def failing():
        calls.append(1)
        raise ServerError("HTTP 503", status=503)

    assert cache.get("k", failing) == "v1"
    wait_for(lambda: calls)
    wait_for(lambda: cache.get("k", failing) == "v1" and len(calls) == 1)


def test_invalidated_value_is_fetched_while_waiting():
    cache = MetadataCache(60)
    cache.get("k", lambda: "v1")
    cache.invalidate("k")
    assert cache.get("k", lambda: "v2") == "v2"


def test_invalidated_value_falls_back_when_server_fails():
    cache = MetadataCache(60)
    cache.get("k", lambda: "v1")
    cache.invalidate("k")

    def failing():
        raise ServerError("HTTP 503", status=503)

    assert cache.get("k", failing) == "v1"


def test_auth_error_raised_without_stale_value():
    cache = MetadataCache(60)

    def rejected():
        raise AuthError("HTTP 401", status=401)

    with pytest.raises(AuthError):
        cache.get("k", rejected)


def test_cached_only_never_fetches():
    cache = MetadataCache(60)
    assert cache.get("k", lambda: pytest.fail("fetched"), cached_only=True) is None


def test_one_fetch_for_concurrent_requests():
    cache = MetadataCache(60)
    started = threading.Event()
    release = threading.Event()
    calls = []

    def slow():
        calls.append(1)
        started.set()
        release.wait()
        return "v"

    threads = [threading.Thread(target=cache.get, args=("k", slow)) for _ in range(5)]
    for thread in threads:
        thread.start()
    started.wait()
    release.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


# Block cache


def source(size: int) -> bytes:
    return bytes((index * 7 + index // 251) % 256 for index in range(size))


class CountingFetch:
    def __init__(self, data: bytes):
        self.data = data
        self.requests: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> list[bytes]:
        self.requests.append((offset, length))
        piece = self.data[offset : offset + length]
        return [piece[index : index + 1000] for index in range(0, len(piece), 1000)]


def test_read_returns_exact_slice(tmp_path):
    data = source(3 * BLOCK_SIZE + 100)
    fetch = CountingFetch(data)
    cache = ContentCache(tmp_path, 1 << 30)
    assert cache.read("key", len(data), BLOCK_SIZE - 5, 300, fetch) == data[BLOCK_SIZE - 5 : BLOCK_SIZE + 295]
    assert fetch.requests == [(0, 2 * BLOCK_SIZE)]


def test_read_past_end_is_short(tmp_path):
    data = source(BLOCK_SIZE + 10)
    cache = ContentCache(tmp_path, 1 << 30)
    assert cache.read("key", len(data), BLOCK_SIZE, 4096, CountingFetch(data)) == data[BLOCK_SIZE:]
    assert cache.read("key", len(data), len(data), 4096, CountingFetch(data)) == b""


def test_cached_blocks_are_not_fetched_again(tmp_path):
    data = source(4 * BLOCK_SIZE)
    fetch = CountingFetch(data)
    cache = ContentCache(tmp_path, 1 << 30)
    cache.read("key", len(data), 0, 10, fetch)
    cache.read("key", len(data), 5, 10, fetch)
    assert fetch.requests == [(0, BLOCK_SIZE)]


def test_cache_survives_reopen_after_flush(tmp_path):
    data = source(2 * BLOCK_SIZE)
    cache = ContentCache(tmp_path, 1 << 30)
    cache.read("key", len(data), 0, len(data), CountingFetch(data))
    cache.close()

    fetch = CountingFetch(data)
    reopened = ContentCache(tmp_path, 1 << 30)
    assert reopened.read("key", len(data), 0, len(data), fetch) == data
    assert fetch.requests == []


def test_unflushed_map_is_fetched_again(tmp_path):
    data = source(BLOCK_SIZE)
    ContentCache(tmp_path, 1 << 30).read("key", len(data), 0, 10, CountingFetch(data))

    fetch = CountingFetch(data)
    ContentCache(tmp_path, 1 << 30).read("key", len(data), 0, 10, fetch)
    assert fetch.requests == [(0, BLOCK_SIZE)]


def test_full_cache_evicts_least_recent(tmp_path):
    data = source(2 * BLOCK_SIZE)
    cache = ContentCache(tmp_path, 3 * BLOCK_SIZE)
    cache.read("old", len(data), 0, len(data), CountingFetch(data))
    cache.read("new", len(data), 0, len(data), CountingFetch(data))

    present = sorted(path.name for path in tmp_path.rglob("*.data"))
    assert present == ["new.data"]


def test_readahead_joins_last_run():
    blocks = bytearray(10)
    assert missing_runs(blocks, 0, 0, 5) == [(0, 5)]


def test_readahead_skipped_when_read_is_cached():
    blocks = bytearray([1, 1, 0, 0])
    assert missing_runs(blocks, 0, 1, 3) == []


def test_readahead_stops_at_present_block():
    blocks = bytearray([0, 0, 1, 0])
    assert missing_runs(blocks, 0, 0, 3) == [(0, 1)]


def test_cache_files_are_private(tmp_path):
    data = source(10)
    cache = ContentCache(tmp_path / "content", 1 << 30)
    cache.read("key", len(data), 0, 10, CountingFetch(data))
    data_file = next((tmp_path / "content").rglob("*.data"))
    assert os.stat(data_file).st_mode & 0o077 == 0


def test_failed_fetch_keeps_whole_blocks(tmp_path):
    data = source(3 * BLOCK_SIZE)

    def breaks_after_one_block(offset: int, length: int):
        yield data[offset : offset + BLOCK_SIZE + 10]
        raise ConnectionError("dropped")

    cache = ContentCache(tmp_path, 1 << 30)
    with pytest.raises(ConnectionError):
        cache.read("key", len(data), 0, 3 * BLOCK_SIZE, breaks_after_one_block)

    fetch = CountingFetch(data)
    assert cache.read("key", len(data), 0, 3 * BLOCK_SIZE, fetch) == data
    assert fetch.requests == [(BLOCK_SIZE, 2 * BLOCK_SIZE)]
