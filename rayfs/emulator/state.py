"""The state one running emulator shares between its request handlers."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .db import RecordStore
from .faults import FaultState
from .credentials import TokenRegistry

logger = logging.getLogger(__name__)


@dataclass
class Stats:
    """Request counters read through `/_emulator/stats`."""

    api_requests: int = 0
    by_route: Counter = field(default_factory=Counter)
    download_requests: int = 0
    download_bytes: int = 0
    uploads: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "api_requests": self.api_requests,
            "by_route": dict(sorted(self.by_route.items())),
            "download_requests": self.download_requests,
            "download_bytes": self.download_bytes,
            "uploads": self.uploads,
        }


@dataclass
class DownloadLink:
    project_id: str
    sk: str
    expires_at: float


class LinkRegistry:
    """Opaque download-link tokens, each valid until its `time.monotonic()` deadline."""

    # Expired links are swept once this many links have been issued since the last sweep.
    SWEEP_EVERY = 256

    def __init__(self) -> None:
        self._links: dict[str, DownloadLink] = {}
        self._issued_since_sweep = 0

    def issue(self, project_id: str, sk: str, lifetime_s: float) -> str:
        self._issued_since_sweep += 1
        if self._issued_since_sweep >= self.SWEEP_EVERY:
            self._sweep()

        token = secrets.token_urlsafe(32)
        self._links[token] = DownloadLink(project_id, sk, time.monotonic() + lifetime_s)
        return token

    def resolve(self, token: str) -> DownloadLink | None:
        """Return the link of `token`, or None when it is unknown or expired."""
        link = self._links.get(token)
        if link is None:
            return None
        if time.monotonic() >= link.expires_at:
            del self._links[token]
            return None
        return link

    def _sweep(self) -> None:
        now = time.monotonic()
        for token in [token for token, link in self._links.items() if link.expires_at <= now]:
            del self._links[token]
        self._issued_since_sweep = 0


class EmulatorState:
    """Records, files, faults, tokens, links and counters of one emulator."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.files_dir = os.path.join(data_dir, "files")
        os.makedirs(self.files_dir, exist_ok=True)
        self.store = RecordStore(data_dir)
        self.faults = FaultState()
        self.tokens = TokenRegistry()
        self.links = LinkRegistry()
        self.stats = Stats()
        # Scheme, host and port of download links; None takes them from each request.
        self.root_url: str | None = None

    def close(self) -> None:
        self.store.close()


STATE_KEY = web.AppKey("state", EmulatorState)
