"""Byte-range reads from temporary attachment download links.

A download link is a secret until it expires, because its path or query
string is the credential. Logs and error messages therefore name it
"download link for project ID sk SK" when the caller passes a DownloadLink,
and "download link" when it passes a bare URL. No API credentials are sent
to a link.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import requests

from rayfs.api.records import Attachment
from rayfs.api.responses import error_for_exception, error_for_status
from rayfs.api.retry import RetryPolicy
from rayfs.errors import LinkExpired, MalformedResponse, RayfsError

logger = logging.getLogger(__name__)

# Statuses with which a storage service refuses a link that is expired or
# revoked; 401 is included because no credentials are ever sent to a link.
LINK_REFUSED_STATUSES = (401, 403, 404, 410)

CHUNK_SIZE = 256 * 1024

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass
class DownloadLink:
    """A temporary download link and the attachment record it belongs to.

    `fetched_at` is the `time.monotonic()` at which the link was requested,
    taken before the request so that expiry estimates err on the early side.
    The vendor documents a lifetime of 30 minutes.
    """

    url: str = field(repr=False)
    attachment: Attachment
    fetched_at: float

    @property
    def label(self) -> str:
        """The link's name in logs and errors, without the secret URL."""
        return f"download link for project {self.attachment.id} sk {self.attachment.sk}"

    def age(self) -> float:
        """Seconds since the link was requested."""
        return time.monotonic() - self.fetched_at


def link_url_and_label(link: str | DownloadLink) -> tuple[str, str]:
    """Return the URL to request and the label to log for a link or a bare URL."""
    if isinstance(link, DownloadLink):
        return link.url, link.label
    return link, "download link"


def range_header(offset: int, length: int | None) -> str:
    """Build the `Range` header for `length` bytes from `offset`, or to the end when None."""
    if length is None:
        return f"bytes={offset}-"
    return f"bytes={offset}-{offset + length - 1}"


def open_link(
    session: requests.Session,
    url: str,
    label: str,
    offset: int,
    length: int | None,
    timeout: float | tuple[float, float],
) -> requests.Response | None:
    """Send one ranged GET to a link and return the streaming response positioned at `offset`.

    Returns None on HTTP 416 (the range starts at or past the end of the
    file). Raises LinkExpired for 401/403/404/410, the mapped HTTP error for
    other error statuses, and MalformedResponse when the server returns 200
    for a range that does not start at 0, or 206 for another range. The
    caller closes the response.
    """
    headers = {"Range": range_header(offset, length), "Accept-Encoding": "identity"}
    started = time.monotonic()

    try:
        response = session.get(url, headers=headers, timeout=timeout, stream=True)
    except requests.RequestException as exc:
        raise error_for_exception(exc, method="GET", label=label) from exc

    status = response.status_code
    logger.debug(
        "GET %s %s -> %d in %.0f ms",
        label, headers["Range"], status, (time.monotonic() - started) * 1000,
    )

    if status == 416:
        response.close()
        return None

    if status in LINK_REFUSED_STATUSES:
        response.close()
        raise LinkExpired(
            f"GET {label} failed: HTTP {status}, the link has expired or was revoked; request a new one",
            method="GET", url=label, status=status,
        )

    error = error_for_status(response, method="GET", label=label)
    if error is not None:
        response.close()
        raise error

    if status == 206:
        _check_content_range(response, label, offset)
        return response

    if status == 200 and offset == 0:
        return response

    response.close()
    raise MalformedResponse(
        f"GET {label} returned HTTP {status} for a request of {headers['Range']}; "
        "the server ignored the Range header",
        method="GET", url=label, status=status,
    )


def _check_content_range(response: requests.Response, label: str, offset: int) -> None:
    """Raise MalformedResponse unless a 206 response starts at `offset`."""
    value = response.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.match(value)

    if match is None or int(match.group(1)) != offset:
        response.close()
        raise MalformedResponse(
            f"GET {label} returned HTTP 206 with Content-Range {value!r}, expected a range starting at {offset}",
            method="GET", url=label, status=206,
        )


def read_body(response: requests.Response, label: str, limit: int) -> bytes:
    """Read at most `limit` bytes of a streaming response, then close it."""
    buffer = bytearray()

    try:
        for chunk in response.iter_content(chunk_size=min(CHUNK_SIZE, max(1, limit))):
            buffer += chunk[:limit - len(buffer)]
            if len(buffer) >= limit:
                break
    except requests.RequestException as exc:
        raise error_for_exception(exc, method="GET", label=label) from exc
    finally:
        response.close()

    return bytes(buffer)


class RangeStream:
    """Stream of the bytes of a download link from `offset`, in chunks.

    Use it as a context manager and iterate it. The first request is sent in
    the constructor, so a refused link raises LinkExpired there. When the
    connection breaks mid-body, the stream sends a new request from the
    first byte not yet yielded, with the same retry budget and backoff as
    every other request. Without `length` it runs to the end of the file.
    """

    def __init__(
        self,
        opener: Callable[[int, int | None], requests.Response | None],
        retry_policy: RetryPolicy,
        label: str,
        offset: int,
        length: int | None = None,
        chunk_size: int = CHUNK_SIZE,
    ):
        self._opener = opener
        self._retry_policy = retry_policy
        self._label = label
        self._position = offset
        self._end = None if length is None else offset + length
        self._chunk_size = chunk_size
        self._closed = False
        self._response = self._open()

    @property
    def position(self) -> int:
        """Offset in the file of the next byte the stream yields."""
        return self._position

    def _remaining(self) -> int | None:
        return None if self._end is None else self._end - self._position

    def _open(self) -> requests.Response | None:
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return None
        return self._retry_policy.call(
            lambda: self._opener(self._position, remaining),
            method="GET", label=self._label,
        )

    def __enter__(self) -> RangeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        resumes = 0

        while self._response is not None and not self._closed:
            try:
                yield from self._yield_chunks(self._response)
                self.close()
                return
            except requests.RequestException as exc:
                error: RayfsError = error_for_exception(exc, method="GET", label=self._label)
                self._response.close()
                resumes += 1
                if not error.retryable or resumes > self._retry_policy.max_retries:
                    raise error from exc
                self._retry_policy.wait_before_retry(resumes, error, method="GET", label=self._label)
                self._response = self._open()

    def _yield_chunks(self, response: requests.Response) -> Iterator[bytes]:
        for chunk in response.iter_content(chunk_size=self._chunk_size):
            remaining = self._remaining()
            if remaining is not None:
                chunk = chunk[:remaining]

            self._position += len(chunk)
            if chunk:
                yield chunk

            if remaining is not None and self._position >= self._end:
                return

    def close(self) -> None:
        """Release the connection; iterating a closed stream yields nothing more."""
        self._closed = True
        if self._response is not None:
            self._response.close()
            self._response = None
