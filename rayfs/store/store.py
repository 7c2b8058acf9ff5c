"""The mount's view of the account: records, download links and cached bytes."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Iterator

from rayfs.api.downloads import DownloadLink
from rayfs.api.records import Attachment, Project, ProjectRecords
from rayfs.errors import LinkExpired
from rayfs.store.content import BLOCK_SIZE, ContentCache
from rayfs.store.metadata import MetadataCache

logger = logging.getLogger(__name__)

DEFAULT_METADATA_TTL = 60.0
DEFAULT_CONTENT_MAX_BYTES = 10 * 1024**3

# The API documents download links as valid for 30 minutes. A cached link is
# replaced 5 minutes before that, and at once when the link host rejects it.
LINK_REUSE_SECONDS = 25 * 60

# Sequential reads fetch ahead in growing steps, from one block up to this many bytes.
MAX_READAHEAD = 16 * 1024 * 1024


class Store:
    """Caches the account's records and attachment bytes in front of an `ApiClient`.

    `account` names the account in cache keys (for example the API URL and
    client id), so two accounts sharing a cache folder never share bytes.
    """

    def __init__(
        self,
        api,
        *,
        cache_dir: Path,
        account: str,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        content_max_bytes: int = DEFAULT_CONTENT_MAX_BYTES,
    ):
        self._api = api
        self._account = account
        self._metadata = MetadataCache(metadata_ttl)
        self._links: dict[tuple[str, str], DownloadLink] = {}
        self._links_lock = threading.Lock()
        self._content = ContentCache(cache_dir / "content", content_max_bytes)

    # Records

    def projects(self, *, cached_only: bool = False) -> list[Project] | None:
        """Return the project list of `GET /project`, cached for the metadata TTL."""
        return self._metadata.get("projects", self._api.list_projects, cached_only=cached_only)

    def project_records(self, project_id: str, *, cached_only: bool = False) -> ProjectRecords | None:
        """Return every record of one project from one `GET /project/{_id}`, cached for the metadata TTL."""
        return self._metadata.get(
            ("project", project_id), lambda: self._api.get_project(project_id), cached_only=cached_only
        )

    def invalidate_project(self, project_id: str) -> None:
        """Make the next listing of `project_id` ask the server again."""
        self._metadata.invalidate(("project", project_id))

    # Attachment bytes

    def open_attachment(self, attachment: Attachment) -> AttachmentReader:
        """Return a reader for one open file handle of `attachment`."""
        return AttachmentReader(self, attachment)

    def read_attachment(self, attachment: Attachment, offset: int, length: int, *, readahead: int = 0) -> bytes:
        """Return bytes of an attachment, from the disk cache or fetched through its download link."""
        return self._content.read(
            self._content_key(attachment),
            attachment.size,
            offset,
            length,
            lambda start, count: self._fetch_range(attachment, start, count),
            readahead=readahead,
        )

    def flush_attachment(self, attachment: Attachment) -> None:
        self._content.flush(self._content_key(attachment))

    def close(self) -> None:
        """Save the content cache's block maps; the store must not be used afterwards."""
        self._content.close()

    def _content_key(self, attachment: Attachment) -> str:
        identity = f"{self._account}\0{attachment.id}\0{attachment.sk}"
        return hashlib.sha256(identity.encode()).hexdigest()[:40]

    def _fetch_range(self, attachment: Attachment, offset: int, length: int) -> Iterator[bytes]:
        """Yield the bytes of an attachment's range in chunks, renewing a refused download link once."""
        link = self._download_link(attachment, renew=False)
        try:
            stream = self._api.open_range(link, offset, length)
        except LinkExpired:
            logger.info(
                "download link for project %s sk %s was rejected; fetching a new one", attachment.id, attachment.sk
            )
            link = self._download_link(attachment, renew=True)
            stream = self._api.open_range(link, offset, length)

        with stream:
            yield from stream

    def _download_link(self, attachment: Attachment, *, renew: bool) -> DownloadLink:
        key = (attachment.id, attachment.sk)
        with self._links_lock:
            cached = self._links.get(key)
            if cached is not None and not renew and time.monotonic() - cached.fetched_at < LINK_REUSE_SECONDS:
                return cached

        link = self._api.get_download_link(attachment.id, attachment.sk)
        with self._links_lock:
            self._links[key] = link
        logger.debug("fetched a download link for project %s sk %s", attachment.id, attachment.sk)
        return link


class AttachmentReader:
    """Reads one open attachment, fetching ahead while the reads are sequential."""

    def __init__(self, store: Store, attachment: Attachment):
        self._store = store
        self.attachment = attachment
        self._next_offset = 0
        self._readahead = 0
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            if offset == self._next_offset and offset > 0:
                self._readahead = min(max(self._readahead * 2, BLOCK_SIZE), MAX_READAHEAD)
            elif offset != self._next_offset:
                self._readahead = 0
            self._next_offset = offset + length
            readahead = self._readahead

        return self._store.read_attachment(self.attachment, offset, length, readahead=readahead)

    def close(self) -> None:
        self._store.flush_attachment(self.attachment)
