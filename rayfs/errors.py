"""The one exception tree of rayfs.

Every layer raises these; `rayfs.mount.errno_for` turns them into errno values
in one place, and the CLI turns them into one-line messages.

    RayfsError
    ├── ConfigError                 invalid option, config file or mount point
    ├── ApiError                    talking to the RAYTeams API failed
    │   ├── TransportError          no HTTP response: refused, reset, DNS, TLS
    │   │   └── ApiTimeout          connect or read timed out
    │   ├── HTTPStatusError         an HTTP error status (.status)
    │   │   ├── AuthError           401 or 403: credentials rejected
    │   │   ├── RateLimited         429 (.retry_after in seconds, or None)
    │   │   └── ServerError         5xx
    │   ├── NotFoundError           404, errorCode NO_ITEM, or empty data
    │   │                           (also a FileNotFoundError, as in fsspec)
    │   ├── ApplicationError        HTTP 200 with errorCode or status "fail"
    │   ├── MalformedResponse       the body is not the documented envelope
    │   └── LinkExpired             a download link was refused (expired)
    └── FsError                     a file operation the mount refuses
        ├── NoSuchPath              ENOENT
        ├── NotADirectory           ENOTDIR
        ├── IsADirectory            EISDIR
        ├── ReadOnly                EACCES: the mode forbids it
        ├── NotPermitted            EPERM: the API has no call for it
        ├── NoAttribute             ENODATA: no such extended attribute
        ├── AlreadyExists           EEXIST
        ├── Busy                    EBUSY: the file is being uploaded
        ├── CrossDevice             EXDEV: a move that must be a copy
        ├── NotSupported            ENOTSUP: the mount has no such feature
        └── SpoolLocked             another mount uses the upload spool

Retryable errors (`TransportError`, `RateLimited`, `ServerError`) carry
`retryable = True`; the API client retries them with backoff.
"""

from __future__ import annotations


class RayfsError(Exception):
    """Base class of every error rayfs raises on purpose."""

    retryable = False


class ConfigError(RayfsError):
    """An option, config file or mount point is invalid."""


class ApiError(RayfsError):
    """A request to the RAYTeams API failed.

    `method` and `url` name the request (never with a token or a download
    link's query string), `status` is the HTTP status when there was one.
    """

    def __init__(self, message: str, *, method: str = "", url: str = "", status: int | None = None):
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status


class TransportError(ApiError):
    """No HTTP response arrived: connection refused or reset, DNS, TLS."""

    retryable = True


class ApiTimeout(TransportError):
    """The connection or the response timed out."""


class HTTPStatusError(ApiError):
    """The server returned an HTTP error status."""


class AuthError(HTTPStatusError):
    """The server rejected the credentials (401 or 403)."""


class RateLimited(HTTPStatusError):
    """HTTP 429; `retry_after` is the server's `Retry-After` in seconds."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(HTTPStatusError):
    """HTTP 5xx."""

    retryable = True


class NotFoundError(ApiError, FileNotFoundError):
    """The record does not exist: HTTP 404, errorCode NO_ITEM or empty data."""


class ApplicationError(ApiError):
    """HTTP 200 carrying `errorCode` or `status: fail`; `code` is the server's code."""

    def __init__(self, message: str, *, code: str = "", **kwargs):
        super().__init__(message, **kwargs)
        self.code = code


class MalformedResponse(ApiError):
    """The body is not JSON or not the documented envelope."""


class LinkExpired(ApiError):
    """The download link was refused, usually because it expired."""


class FsError(RayfsError):
    """A file operation the mount refuses; subclasses fix the errno."""


class NoSuchPath(FsError, FileNotFoundError):
    """No entry with this name."""


class NotADirectory(FsError):
    """A path component is a file, not a folder."""


class IsADirectory(FsError):
    """A file operation was asked of a folder."""


class ReadOnly(FsError):
    """The entry's mode forbids the change (EACCES)."""


class NotPermitted(FsError):
    """The API has no call for this change (EPERM)."""


class NoAttribute(FsError):
    """The extended attribute does not exist (ENODATA)."""


class AlreadyExists(FsError):
    """An entry with this name exists (EEXIST)."""


class Busy(FsError):
    """The file is being uploaded and cannot change now (EBUSY)."""


class CrossDevice(FsError):
    """A rename out of its project's attachments/ (EXDEV), which `mv` turns into copy and delete."""


class SpoolLocked(FsError, ConfigError):
    """Another rayfs process holds the upload spool's lock."""


class NotSupported(FsError):
    """The mount has no such feature (ENOTSUP), which copying tools skip quietly."""
