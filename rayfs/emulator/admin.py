"""Admin routes under `/_emulator`: faults, counters and raw records.

They need no credentials, so they serve only peers on a loopback address
and reject anyone else with HTTP 403.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import os
from typing import Any

from aiohttp import web

from .datasets import set_file_time, write_attachment_file
from .db import attachment_filename
from .faults import FaultConfigError
from .state import STATE_KEY, EmulatorState, Stats

logger = logging.getLogger(__name__)

ADMIN_PREFIX = "/_emulator"
CONTENT_KEY = "_content_base64"


def is_loopback_peer(request: web.Request) -> bool:
    remote = request.remote
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@web.middleware
async def loopback_only(request: web.Request, handler):
    """Reject admin requests from peers that are not on a loopback address."""
    if request.path.startswith(ADMIN_PREFIX + "/") and not is_loopback_peer(request):
        logger.warning("admin request %s %s from non-loopback peer %s rejected", request.method, request.path, request.remote)
        return web.json_response({"message": "Forbidden: admin routes answer loopback peers only"}, status=403)
    return await handler(request)


def _state(request: web.Request) -> EmulatorState:
    return request.app[STATE_KEY]


def _bad_request(message: str) -> web.Response:
    logger.info("admin request rejected: %s", message)
    return web.json_response({"message": message}, status=400)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        logger.info("admin request rejected: invalid JSON body: %s", exc)
        raise web.HTTPBadRequest(
            text=json.dumps({"message": f"invalid JSON body: {exc}"}), content_type="application/json"
        ) from exc


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_state(request).faults.snapshot())


async def put_faults(request: web.Request) -> web.Response:
    changes = await _json_body(request)
    try:
        settings = _state(request).faults.update(changes)
    except FaultConfigError as exc:
        return _bad_request(str(exc))
    return web.json_response(settings)


async def delete_faults(request: web.Request) -> web.Response:
    state = _state(request)
    state.faults.reset()
    return web.json_response(state.faults.snapshot())


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(_state(request).stats.as_dict())


async def reset_stats(request: web.Request) -> web.Response:
    state = _state(request)
    state.stats = Stats()
    return web.json_response(state.stats.as_dict())


def _write_attachment_files(state: EmulatorState, records: list[dict[str, Any]], contents: dict[int, bytes]) -> None:
    """Write the given bytes, or generate them, for every attachment among `records`."""
    for position, record in enumerate(records):
        if not record["sk"].startswith("attachments:"):
            continue

        if position not in contents:
            write_attachment_file(state.files_dir, record, state.store.get(record["_id"], "project"))
            continue

        path = os.path.join(state.files_dir, attachment_filename(record["_id"], record["sk"]))
        temp_path = f"{path}.partial"
        with open(temp_path, "wb") as out:
            out.write(contents[position])
        os.replace(temp_path, path)
        set_file_time(path, record)


async def put_records(request: web.Request) -> web.Response:
    """Insert or replace raw records, writing the bytes of attachment records.

    An attachment record may carry its bytes in `_content_base64`, which is
    removed before the record is stored. Without it, bytes of the record's
    `size` are generated from its `filetype`.
    """
    state = _state(request)
    body = await _json_body(request)
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        return _bad_request('invalid body: expected {"records": [...]}')

    cleaned = []
    contents: dict[int, bytes] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("_id"), str) or not isinstance(record.get("sk"), str):
            return _bad_request(f"invalid record {position}: _id and sk must be strings")
        record = dict(record)
        encoded = record.pop(CONTENT_KEY, None)
        if encoded is not None:
            try:
                contents[position] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, TypeError):
                return _bad_request(f"invalid record {position}: {CONTENT_KEY} is not valid base64")
        cleaned.append(record)

    count = state.store.upsert(cleaned)
    await asyncio.get_running_loop().run_in_executor(None, _write_attachment_files, state, cleaned, contents)
    logger.info("admin stored %d records", count)
    return web.json_response({"status": "success", "data": count})


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(f"{ADMIN_PREFIX}/faults", get_faults)
    router.add_put(f"{ADMIN_PREFIX}/faults", put_faults)
    router.add_delete(f"{ADMIN_PREFIX}/faults", delete_faults)
    router.add_get(f"{ADMIN_PREFIX}/stats", get_stats)
    router.add_post(f"{ADMIN_PREFIX}/stats/reset", reset_stats)
    router.add_post(f"{ADMIN_PREFIX}/records", put_records)
