"""HTTP client of the RAYTeams Project API.

One `ApiClient` serves a whole mount: it keeps one `requests.Session` with a
connection pool sized for the FUSE worker threads, and its methods may be
called from many threads at once. Every call has a timeout, retryable errors
are retried with backoff, a 401 triggers one token refresh, and the
`{"status": "success", "data": ...}` envelope is unwrapped into typed records.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
import time
from typing import Any, Callable
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from rayfs import __version__
from rayfs.api.downloads import DownloadLink, RangeStream, link_url_and_label, open_link, read_body
from rayfs.api.multipart import MultipartFileBody
from rayfs.api.records import (
    SK_ATTACHMENT_PREFIX,
    Attachment,
    Group,
    History,
    Memo,
    Order,
    Project,
    ProjectRecords,
    Record,
    split_records,
)
from rayfs.api.responses import error_for_exception, error_for_status, unwrap_envelope, url_path
from rayfs.api.retry import RetryPolicy
from rayfs.errors import AuthError, ConfigError, MalformedResponse, NotFoundError, RayfsError

logger = logging.getLogger(__name__)

# (connect, read) timeouts in seconds for every request.
DEFAULT_TIMEOUT = (5.0, 30.0)

# Regions of the RAYTeams platform; a token works only in the region that issued it.
REGIONS = (
    "ap-northeast-1",
    "ap-northeast-2",
    "us-east-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-north-1",
    "sa-east-1",
)

# Connections kept per host. FUSE serves each request on its own thread, and
# about 16 run at once under a file manager or a parallel copy. Requests
# beyond that open extra connections, which are closed after use.
POOL_SIZE = 16

# Host pools kept: the API host and the host of the download links.
POOL_HOSTS = 4

AUTH_SCHEMES = ("Bearer", "", "token")

FALLBACK_CONTENT_TYPE = "application/octet-stream"


class _HideRequestTargets(logging.Filter):
    """Replace request paths and URLs in urllib3's log records with a placeholder.

    urllib3 logs every request line at DEBUG, and the path of a download link
    can be its secret. rayfs logs each request itself, with a safe label.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                "<hidden by rayfs>" if isinstance(arg, str) and (arg.startswith("/") or "://" in arg) else arg
                for arg in record.args
            )
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_HideRequestTargets())


def base_url_for_region(region: str) -> str:
    """Return the Project API base URL of a region, such as ap-northeast-2.

    Raises ConfigError naming the region and listing the valid ones.
    """
    name = region.strip().lower()
    if name not in REGIONS:
        raise ConfigError(f"unknown region {region!r}; valid regions: {', '.join(REGIONS)}")
    return f"https://api-{name}-project.rayteams.com/v1.0"


class _NoNetrcAuth(requests.auth.AuthBase):
    """Leave requests unchanged.

    A session without auth adds credentials from ~/.netrc, which would
    replace the API's Authorization header or break a presigned download link.
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def _header_value(value: str, description: str, *, error: type[RayfsError]) -> str:
    """Strip surrounding whitespace from a credential and reject one that cannot be a header value.

    The message contains `description` ("the API token") but never the value.
    """
    stripped = value.strip()
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in stripped):
        raise error(f"{description} contains whitespace or control characters; check where it was configured")
    return stripped


class ApiClient:
    """Client of the RAYTeams Project API at `base_url` (e.g. "https://api-ap-northeast-2-project.rayteams.com/v1.0").

    `auth_scheme` picks how the token is sent, because the vendor's docs do
    not agree: "Bearer" sends `Authorization: Bearer TOKEN`, "" sends
    `Authorization: TOKEN`, and "token" sends `token: TOKEN` as well as
    `Authorization: TOKEN`. `token_refresher`, if given, is called with no
    arguments after an HTTP 401 and returns a new token. The request is then
    sent once more with it, and a second 401 raises AuthError. `timeout` is a
    (connect, read) pair in seconds or one number for both.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        client_id: str,
        *,
        auth_scheme: str = "Bearer",
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        token_refresher: Callable[[], str] | None = None,
    ):
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"invalid API URL {base_url!r}; expected http(s)://HOST/v1.0")
        if parts.query or parts.fragment:
            raise ConfigError(f"invalid API URL {base_url!r}; remove the query string or fragment")
        self.base_url = base_url.strip().rstrip("/")

        scheme = "Bearer" if auth_scheme.lower() == "bearer" else auth_scheme.lower()
        if scheme not in AUTH_SCHEMES:
            raise ConfigError(f"unknown auth scheme {auth_scheme!r}; use 'Bearer', '' (bare token) or 'token'")
        self.auth_scheme = scheme

        self._token = _header_value(token, "the API token", error=ConfigError)
        if not self._token and token_refresher is None:
            raise ConfigError("the API token is empty; pass --token or --token-file, or run 'rayfs login'")
        self.client_id = _header_value(client_id, "the client id", error=ConfigError)
        self._token_refresher = token_refresher
        self._token_lock = threading.Lock()

        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries, backoff_base, backoff_max)
        self._session = self._build_session()

    @staticmethod
    def _build_session() -> requests.Session:
        session = requests.Session()
        session.auth = _NoNetrcAuth()
        session.headers["User-Agent"] = f"rayfs/{__version__}"

        # RetryPolicy retries instead, because it honours Retry-After and logs each retry.
        adapter = HTTPAdapter(pool_connections=POOL_HOSTS, pool_maxsize=POOL_SIZE, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def close(self) -> None:
        """Close the pooled connections; the client is unusable afterwards."""
        self._session.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------

    def _auth_headers(self, token: str) -> dict[str, str]:
        if self.auth_scheme == "Bearer":
            headers = {"Authorization": f"Bearer {token}"}
        elif self.auth_scheme == "token":
            headers = {"Authorization": token, "token": token}
        else:
            headers = {"Authorization": token}

        if self.client_id:
            headers["x-rayteams-client-id"] = self.client_id
        return headers

    def _refresh_token(self, rejected_token: str) -> bool:
        """Replace a token the server rejected; return False when no new one is available.

        Threads that got a 401 with the same token wait on one refresh; a
        thread whose token was already replaced just retries.
        """
        with self._token_lock:
            if self._token != rejected_token:
                return True
            if self._token_refresher is None:
                return False

            logger.info("API rejected the token with HTTP 401; requesting a new token")
            try:
                new_token = self._token_refresher()
            except RayfsError:
                raise
            except Exception as exc:
                # The refresher is caller code (an OAuth request, a file read), so anything may fail.
                raise AuthError(f"token refresh failed: {type(exc).__name__}: {exc}") from exc

            new_token = _header_value(new_token or "", "the refreshed token", error=AuthError)
            if not new_token or new_token == rejected_token:
                logger.warning("token refresh returned no new token")
                return False

            self._token = new_token
            return True

    def _call(
        self,
        method: str,
        path: str,
        *,
        body_factory: Callable[[], MultipartFileBody] | None = None,
    ) -> Any:
        """Send an API request with retries and token refresh; return the envelope's data.

        `body_factory` builds a fresh request body for each attempt, which is
        what makes an upload replayable.
        """
        url = self.base_url + path
        label = url_path(url)
        refreshed = False

        def attempt() -> Any:
            nonlocal refreshed

            while True:
                token = self._token
                response = self._send(method, url, label, token, body_factory)

                if response.status_code == 401 and not refreshed:
                    if self._refresh_token(token):
                        refreshed = True
                        continue

                error = error_for_status(response, method=method, label=label)
                if error is not None:
                    raise error
                return unwrap_envelope(response, method=method, label=label)

        return self.retry_policy.call(attempt, method=method, label=label)

    def _send(
        self,
        method: str,
        url: str,
        label: str,
        token: str,
        body_factory: Callable[[], MultipartFileBody] | None,
    ) -> requests.Response:
        headers = self._auth_headers(token)
        body = body_factory() if body_factory is not None else None
        if body is not None:
            headers["Content-Type"] = body.content_type
            headers["Content-Length"] = str(len(body))
        started = time.monotonic()

        try:
            response = self._session.request(
                method, url, headers=headers, data=body, timeout=self.timeout, allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise error_for_exception(exc, method=method, label=label) from exc
        finally:
            if body is not None:
                body.close()

        logger.debug(
            "%s %s -> %d in %.0f ms", method, label, response.status_code, (time.monotonic() - started) * 1000,
        )
        return response

    # -- projects ------------------------------------------------------------

    @staticmethod
    def _project_path(project_id: str, suffix: str = "") -> str:
        if not project_id:
            raise ValueError("project_id must not be empty")
        return f"/project/{quote(project_id, safe='')}{suffix}"

    def list_projects(self) -> list[Project]:
        """Return the project records of every project the user's groups can see (`GET /project`)."""
        data = self._call("GET", "/project")
        items = self._expect_list(data, "GET", "/project")

        projects = []
        for item in items:
            if not isinstance(item.get("_id"), str) or not item["_id"]:
                logger.warning("GET /project: skipped a project without an _id: %.200r", item)
                continue
            projects.append(Project(item))
        return projects

    def get_project(self, project_id: str) -> ProjectRecords:
        """Return all records of a project from one `GET /project/{_id}`, split by `sk`.

        Raises NotFoundError when the server returns no records.
        """
        path = self._project_path(project_id)
        data = self._call("GET", path)

        if data == [] or data == {}:
            raise NotFoundError(f"GET {path}: project {project_id} not found (no records)", method="GET", url=path)
        items = self._expect_list(data, "GET", path)
        return split_records(project_id, items)

    def get_info(self, project_id: str) -> Project:
        """Return a project's basic information (`GET /project/{_id}/info`).

        Raises NotFoundError for an empty `{}`, as the API sends for an unknown id.
        """
        path = self._project_path(project_id, "/info")
        data = self._call("GET", path)

        if data == {} or data == []:
            raise NotFoundError(f"GET {path}: project {project_id} not found (empty data)", method="GET", url=path)
        if not isinstance(data, dict):
            raise MalformedResponse(
                f"GET {path} returned data of type {type(data).__name__}, expected an object",
                method="GET", url=path,
            )
        return Project(data)

    def get_memos(self, project_id: str) -> list[Memo]:
        """Return a project's memos with their comments (`GET /project/{_id}/memo`)."""
        return self._get_records(project_id, "/memo", Memo)

    def get_attachments(self, project_id: str) -> list[Attachment]:
        """Return a project's attachment records (`GET /project/{_id}/attachments`)."""
        return self._get_records(project_id, "/attachments", Attachment)

    def get_histories(self, project_id: str) -> list[History]:
        """Return a project's change history (`GET /project/{_id}/histories`)."""
        return self._get_records(project_id, "/histories", History)

    def get_orders(self, project_id: str) -> list[Order]:
        """Return a project's orders (`GET /project/{_id}/orders`)."""
        return self._get_records(project_id, "/orders", Order)

    def get_groups(self, project_id: str) -> list[Group]:
        """Return a project's owner and shared groups (`GET /project/{_id}/groups`)."""
        return self._get_records(project_id, "/groups", Group)

    def _get_records(self, project_id: str, suffix: str, record_type: type[Record]) -> list[Any]:
        """GET a list endpoint. An empty object counts as an empty list, because the API sends both."""
        path = self._project_path(project_id, suffix)
        data = self._call("GET", path)

        if data == {}:
            return []
        return [record_type(item) for item in self._expect_list(data, "GET", path)]

    @staticmethod
    def _expect_list(data: Any, method: str, path: str) -> list[dict[str, Any]]:
        """Return the objects of a list `data`, skipping other items with a warning."""
        if not isinstance(data, list):
            raise MalformedResponse(
                f"{method} {path} returned data of type {type(data).__name__}, expected a list",
                method=method, url=path,
            )

        objects = []
        for index, item in enumerate(data):
            if isinstance(item, dict):
                objects.append(item)
            else:
                logger.warning("%s %s: skipped item %d, a %s instead of an object", method, path, index, type(item).__name__)
        return objects

    # -- attachments ---------------------------------------------------------

    def get_download_link(self, project_id: str, sk: str) -> DownloadLink:
        """Request a temporary download link for the attachment `sk` of a project.

        The returned `attachment` is the record without its `downloadLink`.
        Raises NotFoundError for an unknown attachment.
        """
        if not sk:
            raise ValueError("sk must not be empty")
        path = self._project_path(project_id, f"/attachment/download/{quote(sk, safe=':')}")
        fetched_at = time.monotonic()
        data = self._call("GET", path)

        if data == {} or data == []:
            raise NotFoundError(
                f"GET {path}: attachment {sk} of project {project_id} not found (empty data)",
                method="GET", url=path,
            )
        link = data.get("downloadLink") if isinstance(data, dict) else None
        if not isinstance(link, str) or not link:
            raise MalformedResponse(
                f"GET {path} returned no downloadLink for project {project_id} sk {sk}",
                method="GET", url=path,
            )

        url = urljoin(self.base_url + "/", link)
        if urlsplit(url).scheme not in ("http", "https"):
            raise MalformedResponse(
                f"GET {path} returned a downloadLink that is not an http(s) URL for project {project_id} sk {sk}",
                method="GET", url=path,
            )

        record = {key: value for key, value in data.items() if key != "downloadLink"}
        logger.debug("received download link for project %s sk %s", project_id, sk)
        return DownloadLink(url=url, attachment=Attachment(record), fetched_at=fetched_at)

    def read_range(self, url: str | DownloadLink, offset: int, length: int) -> bytes:
        """Return `length` bytes of a download link starting at `offset`.

        Returns fewer bytes only when the file ends first, and b"" when
        `offset` is at or past the end. Raises LinkExpired when the link is
        refused. `url` may be a DownloadLink, which names the attachment in
        logs and errors.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must be 0 or more, got {offset} and {length}")
        if length == 0:
            return b""

        link_url, label = link_url_and_label(url)

        def attempt() -> bytes:
            response = open_link(self._session, link_url, label, offset, length, self.timeout)
            if response is None:
                return b""
            return read_body(response, label, length)

        return self.retry_policy.call(attempt, method="GET", label=label)

    def open_range(self, url: str | DownloadLink, offset: int, length: int | None = None) -> RangeStream:
        """Open a stream of a download link's bytes from `offset`, `length` bytes or to the end.

        Use it as `with client.open_range(link, 0) as stream: for chunk in
        stream: ...`. Errors are those of `read_range`, and a connection that
        breaks mid-body is resumed where it stopped.
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"offset and length must be 0 or more, got {offset} and {length}")
        link_url, label = link_url_and_label(url)

        def opener(position: int, remaining: int | None) -> requests.Response | None:
            return open_link(self._session, link_url, label, position, remaining, self.timeout)

        return RangeStream(opener, self.retry_policy, label, offset, length)

    def upload_attachment(
        self,
        project_id: str,
        path: str | os.PathLike[str],
        filename: str,
        *,
        content_type: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Attachment:
        """Upload the file at `path` as a new attachment named `filename`; return its record.

        The body is streamed from disk with an exact Content-Length, so the
        file must not change during the upload. `content_type` defaults to a
        guess from `filename`. `progress` is called with the file bytes sent
        so far, starting again from 0 when a retry resends the file. Raises
        OSError when the file cannot be read.
        """
        if not filename:
            raise ValueError("filename must not be empty")
        content_type = content_type or mimetypes.guess_type(filename)[0] or FALLBACK_CONTENT_TYPE
        if any(ord(char) < 0x20 or ord(char) > 0x7E for char in content_type):
            raise ValueError(f"content_type must be printable ASCII, got {content_type!r}")

        api_path = self._project_path(project_id, "/attachment/add")
        os.stat(path)

        def body_factory() -> MultipartFileBody:
            return MultipartFileBody(path, "file", filename, content_type, progress=progress)

        # NOTE: a retry after the server stored the file but before its response
        # arrived (a reset connection, a 5xx from a proxy) stores the file twice,
        # because the API has no idempotency key and no call to delete an attachment.
        logger.info("uploading %r to project %s", filename, project_id)
        data = self._call("POST", api_path, body_factory=body_factory)

        record = self._uploaded_record(data, filename, api_path)
        logger.info("uploaded %r to project %s as sk %s", filename, project_id, record.sk)
        return record

    @staticmethod
    def _uploaded_record(data: Any, filename: str, path: str) -> Attachment:
        """Find the new attachment record in an upload's data: an object, or a list containing it."""
        candidates = data if isinstance(data, list) else [data]
        attachments = [
            item for item in candidates
            if isinstance(item, dict) and str(item.get("sk", "")).startswith(SK_ATTACHMENT_PREFIX)
        ]
        named = [item for item in attachments if item.get("name") == filename]
        chosen = (named or attachments)[-1:]

        if not chosen:
            raise MalformedResponse(
                f"POST {path} returned no attachment record for {filename!r}",
                method="POST", url=path,
            )
        record = {key: value for key, value in chosen[0].items() if key != "downloadLink"}
        return Attachment(record)
