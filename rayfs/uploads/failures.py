"""Retry rules for failed uploads: permanent or not, the backoff delay, and the reason shown to users."""

from __future__ import annotations

import http
import logging
import random

from rayfs.errors import ApiError, ApplicationError, AuthError, HTTPStatusError, MalformedResponse, NotFoundError

logger = logging.getLogger(__name__)

# HTTP 408 Request Timeout: the server gave up waiting for the body, so sending it again may work.
RETRYABLE_STATUSES = frozenset({408})


def is_permanent(error: BaseException) -> bool:
    """Return True when sending the same file again cannot succeed without a change.

    Retried: errors the API client marks retryable (HTTP 429, 5xx,
    connection errors, timeouts), HTTP 408, and AuthError, because the
    credentials may be renewed while the file waits. Also retried: a plain
    ApiError, which the client raises when the file changed size while it
    was sent. Permanent: every other HTTP 4xx (such as 413), a 404 or
    NO_ITEM (the project is gone), and an ApplicationError (the server
    returned "fail"). Also permanent: a malformed response, because the
    server may have stored the file and sending it again could store it
    twice, and errors outside the API, such as an unreadable data file.
    """
    if not isinstance(error, ApiError):
        return True
    if error.retryable or isinstance(error, AuthError):
        return False
    if isinstance(error, HTTPStatusError):
        return error.status not in RETRYABLE_STATUSES
    if isinstance(error, (ApplicationError, NotFoundError, MalformedResponse)):
        return True
    return False


def describe(error: BaseException) -> str:
    """Return a short reason for a failed upload, such as "HTTP 413: Payload Too Large"."""
    status = getattr(error, "status", None)
    if isinstance(error, (HTTPStatusError, NotFoundError)) and isinstance(status, int) and status >= 300:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown Status"
        return f"HTTP {status}: {phrase}"

    if isinstance(error, ApiError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def backoff_delay(failures: int, error: BaseException, base: float, maximum: float) -> float:
    """Return the seconds to wait after the `failures`-th failure in a row (1-based).

    The delay is drawn uniformly from [0, min(maximum, base * 2 ** (failures - 1))]
    ("full jitter"). A `retry_after` on the error (HTTP 429 Retry-After)
    is a minimum the server asked for, so the delay is never shorter.
    """
    ceiling = min(maximum, base * 2 ** min(failures - 1, 62))
    delay = random.uniform(0.0, ceiling)

    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        delay = max(delay, float(retry_after))
    return delay
