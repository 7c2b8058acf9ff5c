"""Map HTTP responses and `requests` exceptions onto the rayfs exception tree.

The RAYTeams API reports errors in two ways: HTTP error statuses with bodies
like `{"message": "Unauthorized"}`, and HTTP 200 bodies carrying `errorCode`
or `status: "fail"`. Both end up here, so every caller sees one set of
exceptions whatever the server chose.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from rayfs.errors import (
    ApiError,
    ApiTimeout,
    ApplicationError,
    AuthError,
    ConfigError,
    HTTPStatusError,
    MalformedResponse,
    NotFoundError,
    RateLimited,
    RayfsError,
    ServerError,
    TransportError,
)

logger = logging.getLogger(__name__)

# The errorCode the API sends with HTTP 200 when a record does not exist.
ERROR_CODE_NO_ITEM = "NO_ITEM"

# Characters of a server message or body quoted in an error or a DEBUG line.
QUOTE_LIMIT = 200


def url_path(url: str) -> str:
    """Return the path of a URL, without scheme, host or query string."""
    return urlsplit(url).path or "/"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Read a `Retry-After` header as seconds to wait.

    The header is either a number of seconds or an HTTP-date (RFC 9110,
    section 10.2.3). Returns None when it is missing or unreadable, and 0 for
    a date in the past.
    """
    if value is None or not value.strip():
        return None

    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass

    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None

    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def _server_message(response: requests.Response) -> str:
    """Return the `message` or `error` text of a JSON error body, or ""."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""

    for key in ("message", "error", "errorCode"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:QUOTE_LIMIT]
    return ""


def error_for_status(response: requests.Response, *, method: str, label: str) -> ApiError | None:
    """Return the exception for an HTTP error status, or None for 1xx and 2xx.

    `label` names the request in messages and in the error's `url`: the path
    of an API call, or a description of a download link (whose path may be
    the secret itself).
    """
    status = response.status_code
    if status < 300:
        return None

    reason = f"HTTP {status} {response.reason or ''}".rstrip()
    if 300 <= status < 400:
        # API calls do not follow redirects, so that the `token` header never
        # reaches another host.
        return HTTPStatusError(
            f"{method} {label} failed: unexpected redirect ({reason})",
            method=method, url=label, status=status,
        )

    server_message = _server_message(response)
    detail = f"{reason}: {server_message}" if server_message else reason
    message = f"{method} {label} failed: {detail}"
    fields = {"method": method, "url": label, "status": status}

    if status in (401, 403):
        return AuthError(
            f"{message}. Check the token and client id, or log in again.",
            **fields,
        )
    if status == 404:
        return NotFoundError(message, **fields)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return RateLimited(message, retry_after=retry_after, **fields)
    if status >= 500:
        return ServerError(message, **fields)
    return HTTPStatusError(message, **fields)


def unwrap_envelope(response: requests.Response, *, method: str, label: str) -> Any:
    """Return the `data` of a `{"status": "success", "data": ...}` body.

    Raises NotFoundError for `errorCode: NO_ITEM`, ApplicationError for any
    other `errorCode` or for `status: "fail"`, and MalformedResponse when the
    body is not JSON, not an object or has no `data`.
    """
    fields = {"method": method, "url": label, "status": response.status_code}
    content = response.content

    try:
        body = json.loads(content)
    except ValueError as exc:
        logger.debug("%s %s: body is not JSON, first bytes %r", method, label, content[:QUOTE_LIMIT])
        content_type = response.headers.get("Content-Type", "no Content-Type")
        raise MalformedResponse(
            f"{method} {label} returned a body that is not JSON "
            f"(HTTP {response.status_code}, {content_type}, {len(content)} bytes)",
            **fields,
        ) from exc

    if not isinstance(body, dict):
        logger.debug("%s %s: body is not an object, first bytes %r", method, label, content[:QUOTE_LIMIT])
        raise MalformedResponse(
            f"{method} {label} returned JSON {type(body).__name__}, expected an object with \"data\"",
            **fields,
        )

    error_code = body.get("errorCode")
    if error_code is not None:
        code = str(error_code)
        if code == ERROR_CODE_NO_ITEM:
            raise NotFoundError(f"{method} {label}: not found (errorCode {code})", **fields)
        raise ApplicationError(f"{method} {label} failed: errorCode {code}", code=code, **fields)

    if body.get("status") == "fail":
        code = _fail_code(body)
        raise ApplicationError(f"{method} {label} failed: status fail, {code or 'no error code'}", code=code, **fields)

    if "data" not in body:
        logger.debug("%s %s: body has no data, first bytes %r", method, label, content[:QUOTE_LIMIT])
        raise MalformedResponse(
            f"{method} {label} returned an object without \"data\" (keys: {', '.join(sorted(map(str, body)))[:QUOTE_LIMIT]})",
            **fields,
        )

    return body["data"]


def _fail_code(body: dict[str, Any]) -> str:
    """Return the code of a `status: "fail"` body: `data.code`, else `error`."""
    data = body.get("data")
    if isinstance(data, dict) and data.get("code") is not None:
        return str(data["code"])[:QUOTE_LIMIT]

    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("code", error.get("message"))
    if error is not None:
        return str(error)[:QUOTE_LIMIT]
    return ""


def error_for_exception(exc: requests.RequestException, *, method: str, label: str) -> RayfsError:
    """Return the rayfs exception for a `requests` exception (the caller chains it)."""
    fields = {"method": method, "url": label}

    if isinstance(exc, requests.Timeout):
        return ApiTimeout(f"{method} {label} timed out: {type(exc).__name__}", **fields)

    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return ConfigError(f"{method} {label} failed: invalid URL ({type(exc).__name__})")

    if isinstance(exc, requests.ConnectionError):
        return TransportError(f"{method} {label} failed: no response ({_short_cause(exc)})", **fields)

    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return TransportError(f"{method} {label} failed: the response was cut off ({_short_cause(exc)})", **fields)

    return TransportError(f"{method} {label} failed: {type(exc).__name__}", **fields)


def _short_cause(exc: BaseException) -> str:
    """Describe the innermost cause of a `requests` exception without its URL.

    The text of urllib3 errors repeats the full URL, which for a download link
    is a secret. Only the innermost cause is quoted, and its text only when it
    is an OSError or an http.client error, whose messages carry no URL.
    """
    seen = {id(exc)}
    current: BaseException = exc

    while True:
        candidates = [getattr(current, "reason", None), *current.args, current.__cause__, current.__context__]
        nested = next((item for item in candidates if isinstance(item, BaseException) and id(item) not in seen), None)
        if nested is None:
            break
        seen.add(id(nested))
        current = nested

    name = type(current).__name__
    if isinstance(current, (OSError, http.client.HTTPException)) and str(current):
        return f"{name}: {str(current)[:QUOTE_LIMIT]}"
    return name
