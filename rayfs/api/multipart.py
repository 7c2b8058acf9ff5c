"""A multipart/form-data request body streamed from a file on disk.

`requests` builds multipart bodies in memory, which does not work for
attachments of several gigabytes. `MultipartFileBody` computes its exact
length up front, so the request carries a Content-Length, and reads the file
in blocks only while the HTTP client sends them.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import BinaryIO, Callable, Iterator
from urllib.parse import quote

from rayfs.errors import ApiError

logger = logging.getLogger(__name__)

CRLF = b"\r\n"

# Block size of `__iter__`; `read(n)` callers pick their own.
BLOCK_SIZE = 64 * 1024

# Characters RFC 8187 `attr-char` allows unencoded in `filename*`.
ATTR_CHARS = "!#$&+-.^_`|~"


def quote_filename(filename: str) -> bytes:
    """Return the UTF-8 `filename="..."` value as browsers send it (WHATWG HTML form encoding).

    Only `"`, CR and LF are percent-encoded. Every other character, including
    Hangul, stays as raw UTF-8 bytes, which aiohttp's multipart reader (3.x)
    reads back unchanged.
    """
    escaped = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    return escaped.encode("utf-8")


def content_disposition(field_name: str, filename: str) -> bytes:
    """Build a part's Content-Disposition header with both `filename` and `filename*`.

    `filename*=UTF-8''...` (RFC 8187) is unambiguous for servers that read it;
    the raw UTF-8 `filename` serves those that do not.
    """
    extended = quote(filename.encode("utf-8"), safe=ATTR_CHARS)
    return (
        b'Content-Disposition: form-data; name="' + quote_filename(field_name)
        + b'"; filename="' + quote_filename(filename)
        + b"\"; filename*=UTF-8''" + extended.encode("ascii")
    )


class MultipartFileBody:
    """One-part multipart/form-data body whose part is the bytes of `path`.

    The file is opened on the first `read` and closed when its bytes are
    sent or on `close`. A body is sent once: build a new one to retry.
    `progress`, if given, is called with the file bytes handed to the HTTP
    client so far. Raises ApiError from `read` when the file's size changed
    since the body was built, because the Content-Length already sent would
    no longer be true.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        field_name: str,
        filename: str,
        content_type: str,
        *,
        progress: Callable[[int], None] | None = None,
    ):
        self.path = os.fspath(path)
        self.file_size = os.stat(self.path).st_size
        self.boundary = f"rayfs-{uuid.uuid4().hex}"
        self.progress = progress

        boundary = self.boundary.encode("ascii")
        self._head = (
            b"--" + boundary + CRLF
            + content_disposition(field_name, filename) + CRLF
            + b"Content-Type: " + content_type.encode("ascii", "replace") + CRLF
            + CRLF
        )
        self._tail = CRLF + b"--" + boundary + b"--" + CRLF

        self._head_sent = 0
        self._file_sent = 0
        self._tail_sent = 0
        self._file: BinaryIO | None = None

    @property
    def content_type(self) -> str:
        """The request's Content-Type header, with the boundary."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self.file_size + len(self._tail)

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes of the body (all that is left when negative); b"" at the end."""
        if size is None or size < 0:
            size = len(self)
        parts: list[bytes] = []

        if size > 0 and self._head_sent < len(self._head):
            chunk = self._head[self._head_sent:self._head_sent + size]
            self._head_sent += len(chunk)
            size -= len(chunk)
            parts.append(chunk)

        if size > 0 and self._file_sent < self.file_size:
            chunk = self._read_file(size)
            size -= len(chunk)
            parts.append(chunk)

        if size > 0 and self._file_sent >= self.file_size and self._tail_sent < len(self._tail):
            chunk = self._tail[self._tail_sent:self._tail_sent + size]
            self._tail_sent += len(chunk)
            parts.append(chunk)

        return b"".join(parts)

    def _read_file(self, size: int) -> bytes:
        if self._file is None:
            self._file = open(self.path, "rb")

        requested = min(size, self.file_size - self._file_sent)
        chunk = self._file.read(requested)
        if len(chunk) < requested:
            self.close()
            raise ApiError(
                f"upload of {self.path!r} failed: the file shrank below {self.file_size} bytes while it was sent",
                method="POST",
            )
        self._file_sent += len(chunk)

        if self._file_sent == self.file_size:
            current_size = os.fstat(self._file.fileno()).st_size
            self.close()
            if current_size != self.file_size:
                raise ApiError(
                    f"upload of {self.path!r} failed: the file grew from {self.file_size} "
                    f"to {current_size} bytes while it was sent",
                    method="POST",
                )

        if self.progress is not None:
            self.progress(self._file_sent)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read(BLOCK_SIZE)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        """Close the file if it is open."""
        if self._file is not None:
            self._file.close()
            self._file = None
