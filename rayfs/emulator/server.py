"""The aiohttp application: routes, request logging, faults and authentication.

Middleware order, outermost first: request logging and JSON error bodies,
the loopback check of the admin routes, then counters and faults (API and
download routes only), then authentication (API routes only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus

from aiohttp import web

from . import admin, api, credentials, downloads, oauth
from .faults import FaultAction
from .state import STATE_KEY, EmulatorState

logger = logging.getLogger(__name__)

# Largest body that `request.json()` and `request.post()` read: admin records
# with inline content and OAuth forms. Uploads are streamed and not limited by it.
MAX_BUFFERED_BODY = 64 * 1024 * 1024

DOWNLOAD_PREFIX = "/_files/"


def _is_api_path(path: str) -> bool:
    return path == api.API_PREFIX or path.startswith(api.API_PREFIX + "/")


def _loggable_path(request: web.Request) -> str:
    """Return the request path without a query string or a download-link token."""
    if request.path.startswith(DOWNLOAD_PREFIX):
        return DOWNLOAD_PREFIX + "<link>"
    return request.path


def _message_response(status: int, headers: dict[str, str] | None = None) -> web.Response:
    try:
        message = HTTPStatus(status).phrase
    except ValueError:
        message = "Error"
    return web.json_response({"message": message}, status=status, headers=headers)


class _DroppedResponse(web.Response):
    """A placeholder returned after a fault closed the connection; it is never sent."""


@web.middleware
async def log_requests(request: web.Request, handler):
    """Log each request at DEBUG and give HTTP errors a JSON `{"message": ...}` body."""
    started = time.monotonic()
    try:
        response = await handler(request)
    except web.HTTPRedirection:
        raise
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            response = web.Response(status=exc.status, text=exc.text, content_type="application/json")
        else:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = _message_response(exc.status, headers)
    except ConnectionError as exc:
        logger.info("%s %s: the client went away (%s)", request.method, _loggable_path(request), exc)
        raise
    except Exception:
        logger.exception("request %s %s failed", request.method, _loggable_path(request))
        response = _message_response(500)

    outcome = "dropped" if isinstance(response, _DroppedResponse) else str(response.status)
    logger.debug(
        "%s %s -> %s in %.1f ms", request.method, _loggable_path(request), outcome, 1000 * (time.monotonic() - started)
    )
    return response


def _route_name(request: web.Request) -> str | None:
    """Return the route template such as "GET /project/{_id}", or None for an unknown route."""
    if request.match_info.http_exception is not None:
        return None
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return f"{request.method} {resource.canonical.removeprefix(api.API_PREFIX)}"


def _fault_response(request: web.Request, action: FaultAction) -> web.StreamResponse:
    if action.drop:
        logger.info("fault (%s): dropping the connection of %s %s", action.source, request.method, _loggable_path(request))
        request.protocol.force_close()
        return _DroppedResponse(status=500)

    headers = {}
    if action.retry_after is not None:
        headers["Retry-After"] = str(int(action.retry_after)) if float(action.retry_after).is_integer() else str(action.retry_after)
    logger.info("fault (%s): HTTP %d for %s %s", action.source, action.status, request.method, _loggable_path(request))
    if action.body is not None:
        return web.Response(status=action.status, text=action.body, content_type="application/json", headers=headers)
    return _message_response(action.status, headers)


@web.middleware
async def apply_faults(request: web.Request, handler):
    """Count API and download requests, then apply latency and any due fault."""
    path = request.path
    is_api = _is_api_path(path)
    if not is_api and not path.startswith(DOWNLOAD_PREFIX):
        return await handler(request)

    state: EmulatorState = request.app[STATE_KEY]
    if is_api:
        state.stats.api_requests += 1
        route = _route_name(request)
        if route is not None:
            state.stats.by_route[route] += 1
    else:
        state.stats.download_requests += 1

    latency_ms = state.faults.settings["latency_ms"]
    if latency_ms > 0:
        await asyncio.sleep(latency_ms / 1000)

    action = state.faults.take_queued(request.method, path) or state.faults.draw(is_api)
    if action is not None:
        return _fault_response(request, action)
    return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler):
    """Reject API requests without valid credentials with HTTP 401."""
    if _is_api_path(request.path) and not credentials.request_is_authorized(request, request.app[STATE_KEY].tokens):
        logger.debug("%s %s rejected: invalid or missing credentials", request.method, request.path)
        return web.json_response({"message": "Unauthorized"}, status=401)
    return await handler(request)


def build_app(state: EmulatorState) -> web.Application:
    """Return the emulator application serving `state`."""
    app = web.Application(
        middlewares=[log_requests, admin.loopback_only, apply_faults, authenticate],
        client_max_size=MAX_BUFFERED_BODY,
    )
    app[STATE_KEY] = state
    api.add_routes(app)
    downloads.add_routes(app)
    admin.add_routes(app)
    oauth.add_routes(app)
    return app
