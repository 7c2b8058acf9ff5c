"""Download links: `/_files/<token>`, like presigned URLs, with HTTP Range.

A link needs no credentials and works until its lifetime ends, then gets
HTTP 403 `{"message": "Request has expired"}`. One byte range per request is
honoured with 206 and Content-Range. A header with several ranges, another
unit or an invalid range is ignored, so the whole file is sent (RFC 9110
allows a server to ignore Range).
"""

from __future__ import annotations

import logging
import re

from aiohttp import hdrs, web

from .api import content_disposition, ensure_attachment_file
from .state import STATE_KEY, EmulatorState

logger = logging.getLogger(__name__)

_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$", re.ASCII | re.IGNORECASE)


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


def range_is_satisfiable(header: str, size: int) -> bool | None:
    """Check a Range header against a file of `size` bytes.

    Returns None when the header is not one `bytes=` range (so it is ignored),
    True when the range selects at least one byte, False when it cannot.
    """
    match = _SINGLE_RANGE.match(header.strip())
    if match is None:
        return None

    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        return int(last) > 0 and size > 0
    if last and int(last) < int(first):
        return None
    return int(first) < size


async def serve_file(request: web.Request) -> web.StreamResponse:
    """Send an attachment's bytes for a valid link, whole or one byte range."""
    state: EmulatorState = request.app[STATE_KEY]
    link = state.links.resolve(request.match_info["token"])
    if link is None:
        logger.debug("download rejected: unknown or expired link")
        return _json_error(403, "Request has expired")

    record = state.store.get(link.project_id, link.sk)
    if record is None:
        logger.info("download of %s %s: the record is gone", link.project_id, link.sk)
        return _json_error(404, "Not Found")

    path = await ensure_attachment_file(state, record)
    size = int(record.get("size") or 0)

    forwarded = request
    range_header = request.headers.get(hdrs.RANGE)
    if range_header is not None:
        satisfiable = range_is_satisfiable(range_header, size)
        if satisfiable is False:
            return _json_error(416, "Requested Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
        if satisfiable is None:
            headers = request.headers.copy()
            del headers[hdrs.RANGE]
            forwarded = request.clone(headers=headers)

    return _CountingFileResponse(
        path,
        state,
        forwarded,
        f"{link.project_id} {link.sk}",
        headers={
            hdrs.CONTENT_TYPE: str(record.get("filetype") or "application/octet-stream"),
            hdrs.CONTENT_DISPOSITION: content_disposition(str(record.get("name") or "file")),
            hdrs.CACHE_CONTROL: "private, max-age=0",
        },
    )


class _CountingFileResponse(web.FileResponse):
    """A file response that adds the body bytes it sends to the download counter.

    `forwarded` is the request whose Range header FileResponse applies: the
    original one, or a copy without the Range header when that header is ignored.
    """

    def __init__(self, path: str, state: EmulatorState, forwarded: web.BaseRequest, label: str, headers: dict[str, str]):
        super().__init__(path, headers=headers)
        self._state = state
        self._forwarded = forwarded
        self._label = label

    async def prepare(self, request: web.BaseRequest):
        writer = await super().prepare(self._forwarded)

        if request.method == "GET" and self.status in (200, 206):
            self._state.stats.download_bytes += self.content_length or 0
        logger.debug("download of %s: HTTP %d, %s bytes", self._label, self.status, self.content_length)
        return writer


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_files/{token}", serve_file)
