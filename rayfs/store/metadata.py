"""A TTL cache of API responses with one in-flight fetch per key and stale fallback.

Fresh values live in a `cachetools.TTLCache`. The last good value of every
key also stays in an LRU cache. Once a value expires, `get` returns it at once
and refreshes it in a background thread (stale-while-revalidate). So a slow or
unreachable API never stalls a file manager that already saw the folder. Only
a key with no value, or one explicitly invalidated, is fetched while the
caller waits.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Hashable

from cachetools import LRUCache, TTLCache

from rayfs.errors import ApiError

logger = logging.getLogger(__name__)

# After a failed refresh, a stale value is served this long before the next try,
# so an unreachable API is not asked again by every file-manager request.
STALE_RETRY_INTERVAL = 30.0


class MetadataCache:
    """Caches `fetch()` results per key for `ttl` seconds.

    `get` runs at most one fetch per key at a time; other threads asking for
    the same key wait for it and share its result.
    """

    def __init__(self, ttl: float, *, maxsize: int = 4096, timer: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._timer = timer
        self._fresh: TTLCache = TTLCache(maxsize=maxsize, ttl=ttl, timer=timer)
        self._last_good: LRUCache = LRUCache(maxsize=maxsize)
        self._stale_until: dict[Hashable, float] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        # Keys whose next `get` must fetch while the caller waits, and keys refreshing in the background.
        self._forced: set[Hashable] = set()
        self._refreshing: set[Hashable] = set()

    def get(self, key: Hashable, fetch: Callable[[], Any], *, cached_only: bool = False) -> Any:
        """Return the cached value of `key`, fetching it when it is missing.

        An expired value is returned as it is while a background thread
        refreshes it. With `cached_only` the last known value (fresh or stale)
        or None is returned without fetching. Errors of a fetch the caller
        waits for propagate, unless the error is retryable and a stale value
        exists.
        """
        found, value = self._peek(key)
        if found or cached_only:
            return value if found else self._last_good.get(key)

        with self._lock:
            serve_stale = key in self._last_good and key not in self._forced
            start_refresh = serve_stale and key not in self._refreshing
            if start_refresh:
                self._refreshing.add(key)
            stale = self._last_good.get(key)
        if start_refresh:
            threading.Thread(target=self._refresh, args=(key, fetch), name=f"refresh {key}", daemon=True).start()
        if serve_stale:
            return stale

        with self._key_lock(key):
            found, value = self._peek(key)
            if found:
                return value
            try:
                return self._fetch_and_store(key, fetch)
            except ApiError as exc:
                return self._stale_or_raise(key, exc)

    def invalidate(self, key: Hashable) -> None:
        """Forget the fresh value of `key`, so the next `get` fetches it again while the caller waits."""
        with self._lock:
            self._fresh.pop(key, None)
            self._stale_until.pop(key, None)
            self._forced.add(key)

    def _fetch_and_store(self, key: Hashable, fetch: Callable[[], Any]) -> Any:
        value = fetch()
        with self._lock:
            self._fresh[key] = value
            self._last_good[key] = value
            self._stale_until.pop(key, None)
            self._forced.discard(key)
        return value

    def _refresh(self, key: Hashable, fetch: Callable[[], Any]) -> None:
        try:
            with self._key_lock(key):
                self._fetch_and_store(key, fetch)
        except ApiError as exc:
            with self._lock:
                self._stale_until[key] = self._timer() + STALE_RETRY_INTERVAL
            logger.warning("refresh of %s failed (%s); serving the last known value", key, exc)
        except Exception:
            logger.exception("refresh of %s failed unexpectedly", key)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _peek(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            if key in self._fresh:
                return True, self._fresh[key]
            stale_until = self._stale_until.get(key)
            if stale_until is not None and self._timer() < stale_until and key in self._last_good:
                return True, self._last_good[key]
        return False, None

    def _stale_or_raise(self, key: Hashable, exc: ApiError) -> Any:
        with self._lock:
            if not exc.retryable or key not in self._last_good:
                raise exc
            self._stale_until[key] = self._timer() + STALE_RETRY_INTERVAL
            self._forced.discard(key)
            value = self._last_good[key]

        logger.warning("refresh of %s failed (%s); serving the last known value", key, exc)
        return value

    def _key_lock(self, key: Hashable) -> threading.Lock:
        with self._lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.Lock()
            return lock
