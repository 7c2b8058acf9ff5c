"""The Project API under `/v1.0`, with the quirks of the real service.

Quirks kept on purpose: an unknown project gets HTTP 200 with empty data,
a download link for an unknown attachment gets HTTP 200
`{"errorCode": "NO_ITEM"}`, and upload errors return HTTP 200 with
`"status": "fail"`. Authentication is checked by the server's middleware
before any handler here runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import secrets
import time
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web

from .datasets import write_attachment_file
from .db import attachment_filename
from .state import STATE_KEY, EmulatorState

logger = logging.getLogger(__name__)

API_PREFIX = "/v1.0"
UPLOAD_CHUNK_SIZE = 1 << 20

# Only the standard library's built-in table (no /etc/mime.types), so a guess
# is the same on every machine, plus the dental formats it lacks.
_MIME_TYPES = mimetypes.MimeTypes()
for _type, _extension in (
    ("model/stl", ".stl"),
    ("model/obj", ".obj"),
    ("model/ply", ".ply"),
    ("application/dicom", ".dcm"),
    ("application/dicom", ".dicom"),
):
    _MIME_TYPES.add_type(_type, _extension)

# Sort-key prefixes of the list endpoints.
_LIST_PREFIXES = {
    "memo": "memo:",
    "attachments": "attachments:",
    "histories": "his:",
    "orders": "order:",
    "groups": "project:institute:",
}


def _state(request: web.Request) -> EmulatorState:
    return request.app[STATE_KEY]


def _success_json(data_json: str) -> web.Response:
    return web.Response(text='{"status":"success","data":' + data_json + "}", content_type="application/json")


def _success_list(bodies: list[str]) -> web.Response:
    return _success_json("[" + ",".join(bodies) + "]")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")), status=status, content_type="application/json"
    )


async def list_projects(request: web.Request) -> web.Response:
    return _success_list(_state(request).store.project_infos())


async def get_project(request: web.Request) -> web.Response:
    return _success_list(_state(request).store.project_records(request.match_info["_id"]))


async def get_project_info(request: web.Request) -> web.Response:
    info = _state(request).store.get(request.match_info["_id"], "project")
    return _json({"status": "success", "data": info or {}})


def _list_handler(prefix: str):
    async def handler(request: web.Request) -> web.Response:
        return _success_list(_state(request).store.project_records(request.match_info["_id"], prefix))

    handler.__name__ = f"list_{prefix.rstrip(':').replace(':', '_')}"
    return handler


def root_url(request: web.Request) -> str:
    """Return the scheme, host and port that download links point at."""
    configured = _state(request).root_url
    if configured:
        return configured
    return f"{request.scheme}://{request.host}"


async def get_download_link(request: web.Request) -> web.Response:
    """Return an attachment record with a temporary `downloadLink`."""
    state = _state(request)
    project_id = request.match_info["_id"]
    sk = request.match_info["sk"]

    record = state.store.get(project_id, sk) if sk.startswith("attachments:") else None
    if record is None:
        logger.debug("download link for unknown attachment %s %s", project_id, sk)
        return _json({"errorCode": "NO_ITEM"})

    await ensure_attachment_file(state, record)
    lifetime_s = float(state.faults.settings["link_lifetime_s"])
    token = state.links.issue(project_id, sk, lifetime_s)
    record["downloadLink"] = f"{root_url(request)}/_files/{token}"
    logger.debug("download link issued for %s %s, valid %.0f s", project_id, sk, lifetime_s)
    return _json({"status": "success", "data": record})


async def ensure_attachment_file(state: EmulatorState, record: dict[str, Any]) -> str:
    """Return the path of an attachment's bytes, generating them if the file is missing."""
    path = os.path.join(state.files_dir, attachment_filename(record["_id"], record["sk"]))
    if not os.path.exists(path):
        info = state.store.get(record["_id"], "project")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, write_attachment_file, state.files_dir, record, info)
        logger.info("generated missing attachment file for %s %s", record["_id"], record["sk"])
    return path


def _upload_filetype(part: BodyPartReader, filename: str) -> str:
    """Return the part's own content type unless it is generic, else a guess from the name."""
    declared = part.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if declared and declared != "application/octet-stream":
        return declared
    guessed, _ = _MIME_TYPES.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


def _too_large(limit: int) -> web.Response:
    logger.info("upload rejected: larger than max_upload_bytes=%d", limit)
    return _json({"message": "Payload Too Large"}, status=413)


async def add_attachment(request: web.Request) -> web.Response:
    """Store the multipart field `file` as a new attachment, streaming it to disk."""
    state = _state(request)
    project_id = request.match_info["_id"]
    limit = state.faults.settings["max_upload_bytes"]

    if limit is not None and request.content_length is not None and request.content_length > limit:
        return _too_large(limit)
    if not state.store.exists(project_id, "project"):
        logger.info("upload rejected: project %s not found", project_id)
        return _json({"status": "fail", "error": "project not found"})
    if not request.content_type.startswith("multipart/"):
        return _json({"status": "fail", "data": {"code": "E001"}})

    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            return _json({"status": "fail", "data": {"code": "E001"}})
        if isinstance(part, BodyPartReader) and part.name == "file":
            break
        await part.release()

    filename = part.filename or "file"
    filetype = _upload_filetype(part, filename)
    temp_path = os.path.join(state.files_dir, f".upload-{secrets.token_hex(8)}.partial")

    try:
        size = await _stream_part(part, temp_path, limit)
        if size is None:
            return _too_large(limit)
        await reader.release()

        record = _insert_attachment_record(state, project_id, filename, filetype, size)
        os.replace(temp_path, os.path.join(state.files_dir, attachment_filename(project_id, record["sk"])))
    finally:
        if os.path.exists(temp_path):
            os.unlink(temp_path)

    # NOTE: the project's info record (count, size, updated) and its histories
    # stay as they were, because the vendor does not document whether an upload changes them.
    state.stats.uploads += 1
    logger.info("upload stored: project %s, %s, %r, %s, %d bytes", project_id, record["sk"], filename, filetype, size)
    return _json({"status": "success", "data": record})


async def _stream_part(part: BodyPartReader, path: str, limit: int | None) -> int | None:
    """Write a part to `path` in chunks; returns its size, or None once it exceeds `limit`."""
    loop = asyncio.get_running_loop()
    size = 0
    with open(path, "wb") as out:
        while True:
            chunk = await part.read_chunk(UPLOAD_CHUNK_SIZE)
            if not chunk:
                break
            size += len(chunk)
            if limit is not None and size > limit:
                return None
            await loop.run_in_executor(None, out.write, chunk)
    return size


def _insert_attachment_record(state: EmulatorState, project_id: str, filename: str, filetype: str, size: int) -> dict[str, Any]:
    """Insert the record under `attachments:<now ms>`, moving 1 ms on while that sk is taken."""
    stamp = int(time.time() * 1000)
    while True:
        record = {
            "_id": project_id,
            "sk": f"attachments:{stamp}",
            "filetype": filetype,
            "name": filename,
            "size": size,
            "created": stamp,
        }
        if state.store.insert_new(record):
            return record
        stamp += 1


def content_disposition(filename: str) -> str:
    """Return an attachment Content-Disposition that keeps non-ASCII names (RFC 6266)."""
    fallback = filename.encode("ascii", "replace").decode("ascii").replace('"', "'").replace("\\", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(f"{API_PREFIX}/project", list_projects)
    router.add_get(f"{API_PREFIX}/project/{{_id}}", get_project)
    router.add_get(f"{API_PREFIX}/project/{{_id}}/info", get_project_info)
    for name, prefix in _LIST_PREFIXES.items():
        router.add_get(f"{API_PREFIX}/project/{{_id}}/{name}", _list_handler(prefix))
    router.add_post(f"{API_PREFIX}/project/{{_id}}/attachment/add", add_attachment)
    router.add_get(f"{API_PREFIX}/project/{{_id}}/attachment/download/{{sk}}", get_download_link)
