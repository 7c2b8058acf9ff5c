"""Retries with exponential backoff and full jitter for retryable API errors."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

from rayfs.errors import RayfsError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RetryPolicy:
    """Retry an operation while it raises errors whose `retryable` is true.

    The delay before retry n (1-based) is drawn uniformly from
    [0, min(backoff_max, backoff_base * 2 ** (n - 1))] ("full jitter"), so
    many threads failing together do not retry together. A `retry_after`
    on the error (HTTP 429 `Retry-After`) replaces the drawn delay, capped at
    `backoff_max`. `sleep` is the function that waits; tests may replace it
    to record delays.
    """

    def __init__(self, max_retries: int = 5, backoff_base: float = 0.5, backoff_max: float = 30.0):
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError(f"backoff_base and backoff_max must be 0 or more, got {backoff_base} and {backoff_max}")

        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sleep: Callable[[float], None] = time.sleep

    def delay_for(self, retry_number: int, error: RayfsError) -> float:
        """Return the seconds to wait before retry `retry_number` (1-based) after `error`."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(max(0.0, float(retry_after)), self.backoff_max)

        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (retry_number - 1))
        return random.uniform(0.0, ceiling)

    def wait_before_retry(self, retry_number: int, error: RayfsError, *, method: str, label: str) -> None:
        """Log the coming retry at INFO and sleep for its delay."""
        delay = self.delay_for(retry_number, error)
        logger.info(
            "%s %s: retry %d of %d in %.2f s after: %s",
            method, label, retry_number, self.max_retries, delay, error,
        )
        self.sleep(delay)

    def call(self, operation: Callable[[], T], *, method: str, label: str) -> T:
        """Run `operation`, retrying retryable RayfsErrors up to `max_retries` times.

        The last error is raised unchanged once the retries are used up; a
        non-retryable error is raised at once.
        """
        retry_number = 0

        while True:
            try:
                return operation()
            except RayfsError as exc:
                if not exc.retryable or retry_number >= self.max_retries:
                    raise
                retry_number += 1
                self.wait_before_retry(retry_number, exc, method=method, label=label)
