"""Switchable faults: latency, error rate, dropped connections and one-shot faults.

The state is changed at run time through `/_emulator/faults`. Faults apply to
the API (`/v1.0`) and to download links (`/_files`), never to the admin or
OAuth routes. Random draws come from a seeded `random.Random`, so a run with
the same requests gets the same faults.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0

DEFAULTS: dict[str, Any] = {
    "latency_ms": 0,
    "error_rate": 0.0,
    "error_status": 500,
    "retry_after": None,
    "link_lifetime_s": 1800,
    "drop_rate": 0.0,
    "max_upload_bytes": None,
    "token_lifetime_s": 3600,
    "queue": [],
    "seed": DEFAULT_SEED,
}

_QUEUE_ENTRY_KEYS = {"match", "method", "status", "retry_after", "drop", "body"}


class FaultConfigError(ValueError):
    """A fault setting has an invalid key or value; the message names it."""


@dataclass
class FaultAction:
    """A fault response that replaces the normal handling of a request."""

    drop: bool = False
    status: int = 500
    retry_after: float | None = None
    body: str | None = None
    source: str = "error_rate"


def _check_number(key: str, value: Any, *, minimum: float = 0, maximum: float | None = None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FaultConfigError(f"invalid fault {key}={value!r}: expected a number")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        raise FaultConfigError(f"invalid fault {key}={value!r}: expected a value between {minimum}{upper}")


def _check_status(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise FaultConfigError(f"invalid fault {key}={value!r}: expected an HTTP status from 100 to 599")


def _check_queue(queue: Any) -> list[dict[str, Any]]:
    if not isinstance(queue, list):
        raise FaultConfigError(f"invalid fault queue={queue!r}: expected a list of objects")

    entries = []
    for position, entry in enumerate(queue):
        if not isinstance(entry, dict):
            raise FaultConfigError(f"invalid queue entry {position}: expected an object, got {entry!r}")
        unknown = set(entry) - _QUEUE_ENTRY_KEYS
        if unknown:
            raise FaultConfigError(f"invalid queue entry {position}: unknown keys {sorted(unknown)}")
        if not isinstance(entry.get("match"), str):
            raise FaultConfigError(f"invalid queue entry {position}: 'match' (a path substring) is required")
        if "method" in entry and not isinstance(entry["method"], str):
            raise FaultConfigError(f"invalid queue entry {position}: 'method' must be a string")
        if "status" in entry:
            _check_status(f"queue[{position}].status", entry["status"])
        if "retry_after" in entry:
            _check_number(f"queue[{position}].retry_after", entry["retry_after"], allow_none=True)
        if "drop" in entry and not isinstance(entry["drop"], bool):
            raise FaultConfigError(f"invalid queue entry {position}: 'drop' must be true or false")
        if "body" in entry and not isinstance(entry["body"], str):
            raise FaultConfigError(f"invalid queue entry {position}: 'body' must be a string")
        entries.append(dict(entry))
    return entries


class FaultState:
    """The current fault settings and the random generator that draws from them."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = copy.deepcopy(DEFAULTS)
        self.rng = random.Random(DEFAULT_SEED)

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.settings)

    def reset(self) -> None:
        self.settings = copy.deepcopy(DEFAULTS)
        self.rng = random.Random(DEFAULT_SEED)
        logger.info("faults reset to defaults")

    def update(self, changes: Any) -> dict[str, Any]:
        """Validate and merge `changes` into the settings; returns the new full state.

        Nothing changes when any key or value is invalid. A "queue" value
        replaces the whole queue, and a "seed" value restarts the random draws.
        """
        if not isinstance(changes, dict):
            raise FaultConfigError("invalid faults: expected a JSON object")

        unknown = set(changes) - set(DEFAULTS)
        if unknown:
            raise FaultConfigError(f"unknown fault keys {sorted(unknown)}: expected some of {sorted(DEFAULTS)}")

        merged = dict(changes)
        for key, value in changes.items():
            if key in ("latency_ms", "link_lifetime_s", "token_lifetime_s"):
                _check_number(key, value)
            elif key in ("error_rate", "drop_rate"):
                _check_number(key, value, maximum=1)
            elif key == "error_status":
                _check_status(key, value)
            elif key in ("retry_after", "max_upload_bytes"):
                _check_number(key, value, allow_none=True)
            elif key == "seed":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise FaultConfigError(f"invalid fault seed={value!r}: expected an integer")
            elif key == "queue":
                merged[key] = _check_queue(value)

        self.settings.update(merged)
        if "seed" in changes:
            self.rng = random.Random(changes["seed"])
        logger.info("faults changed: %s", ", ".join(sorted(changes)) or "nothing")
        return self.snapshot()

    def take_queued(self, method: str, path: str) -> FaultAction | None:
        """Remove and return the first queued fault whose match and method fit the request."""
        for position, entry in enumerate(self.settings["queue"]):
            if entry["match"] not in path:
                continue
            if entry.get("method") and entry["method"].upper() != method.upper():
                continue

            del self.settings["queue"][position]
            body = entry.get("body")
            status = entry.get("status", 200 if body is not None else 500)
            retry_after = entry.get("retry_after", self.settings["retry_after"] if status == 429 else None)
            return FaultAction(
                drop=bool(entry.get("drop")),
                status=status,
                retry_after=retry_after,
                body=body,
                source="queue",
            )
        return None

    def draw(self, is_api: bool) -> FaultAction | None:
        """Draw the random faults (dropped connection, then error status) for one request.

        Error statuses apply only to API requests. Draws are made only for a
        rate above zero, so switching one rate on does not shift the others.
        """
        drop_rate = self.settings["drop_rate"]
        if drop_rate > 0 and self.rng.random() < drop_rate:
            return FaultAction(drop=True, source="drop_rate")

        error_rate = self.settings["error_rate"]
        if is_api and error_rate > 0 and self.rng.random() < error_rate:
            status = self.settings["error_status"]
            retry_after = self.settings["retry_after"] if status == 429 else None
            return FaultAction(status=status, retry_after=retry_after, source="error_rate")
        return None
