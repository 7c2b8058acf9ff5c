"""A TTL cache of API answers with one in-flight fetch per key and stale fallback.

Fresh answers live in a `cachetools.TTLCache`; the last good answer of every
key also stays in an LRU cache, so that when a refresh fails because the API
is unreachable or overloaded, the mount keeps serving what it knew.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Hashable

from cachetools import LRUCache, TTLCache

from rayfs.errors import ApiError

logger = logging.getLogger(__name__)

# After a failed refresh, a stale answer is served this long before the next try,
# so an unreachable API is not asked again by every file-manager request.
STALE_RETRY_INTERVAL = 5.0


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

    def get(self, key: Hashable, fetch: Callable[[], Any], *, cached_only: bool = False) -> Any:
        """Return the cached value of `key`, fetching it when it is missing or expired.

        With `cached_only` the last known value (fresh or stale) or None is
        returned without fetching. Errors of `fetch` propagate unless the
        error is retryable and a stale value exists.
        """
        found, value = self._peek(key)
        if found or cached_only:
            return value if found else self._last_good.get(key)

        with self._key_lock(key):
            found, value = self._peek(key)
            if found:
                return value

            try:
                value = fetch()
            except ApiError as exc:
                return self._stale_or_raise(key, exc)

            with self._lock:
                self._fresh[key] = value
                self._last_good[key] = value
                self._stale_until.pop(key, None)
            return value

    def invalidate(self, key: Hashable) -> None:
        """Forget the fresh value of `key`, so the next `get` fetches it again."""
        with self._lock:
            self._fresh.pop(key, None)
            self._stale_until.pop(key, None)

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
            value = self._last_good[key]

        logger.warning("refresh of %s failed (%s); serving the last known answer", key, exc)
        return value

    def _key_lock(self, key: Hashable) -> threading.Lock:
        with self._lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.Lock()
            return lock
