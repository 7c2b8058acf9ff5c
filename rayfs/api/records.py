"""Typed records of the Project API.

Every record keeps the server's JSON object in `raw`, with unknown fields and
key order intact, so the mount can show it byte-for-byte as the server sent
it. The typed attributes are read tolerantly, because the vendor's field types
contradict their own examples (`name` documented as a number, `istrash` as a
string, memo `created` as a string, comment `contents` versus `content`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Sort-key prefixes that classify the records of `GET /project/{_id}`.
SK_PROJECT = "project"
SK_GROUP_PREFIX = "project:institute:"
SK_MEMO_PREFIX = "memo:"
SK_ATTACHMENT_PREFIX = "attachments:"
SK_HISTORY_PREFIX = "his:"
SK_ORDER_PREFIX = "order:"


def as_int(value: Any, default: int = 0) -> int:
    """Read an integer that the server may send as a number, a string or a bool."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return default
    if isinstance(value, float):
        # NaN and infinity parse as JSON numbers but are no valid count or time.
        return int(value) if math.isfinite(value) else default
    return default


def as_bool(value: Any) -> bool:
    """Read a boolean that the server may send as a bool, a string or a number."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y")
    return bool(value)


def as_str(value: Any) -> str:
    """Read a string that the server may send as a number."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value)


def sk_millis(sk: str) -> int | None:
    """Return the Unix milliseconds at the end of a sort key such as `memo:1667454117029`."""
    tail = sk.rsplit(":", 1)[-1]
    if tail.isdigit():
        return int(tail)
    return None


@dataclass
class Record:
    """One `(_id, sk)` row of a project; `raw` is the server's object."""

    raw: dict[str, Any] = field(repr=False)

    @property
    def id(self) -> str:
        return as_str(self.raw.get("_id"))

    @property
    def sk(self) -> str:
        return as_str(self.raw.get("sk"))

    @property
    def created(self) -> int:
        """Creation time in Unix milliseconds; 0 when the record has none."""
        return as_int(self.raw.get("created"))

    @property
    def updated(self) -> int:
        """Update time in Unix milliseconds, falling back to `created`."""
        return as_int(self.raw.get("updated")) or self.created

    @property
    def sk_time(self) -> int:
        """The milliseconds in the sort key, falling back to `created`."""
        millis = sk_millis(self.sk)
        return self.created if millis is None else millis


@dataclass
class Project(Record):
    """The `sk = "project"` record: a project's basic information."""

    @property
    def name(self) -> str:
        return as_str(self.raw.get("name"))

    @property
    def istrash(self) -> bool:
        return as_bool(self.raw.get("istrash"))


@dataclass
class Attachment(Record):
    """An `attachments:<ms>` record: one attached file."""

    @property
    def name(self) -> str:
        return as_str(self.raw.get("name"))

    @property
    def size(self) -> int:
        return max(0, as_int(self.raw.get("size")))

    @property
    def filetype(self) -> str:
        return as_str(self.raw.get("filetype"))


@dataclass
class Memo(Record):
    """A `memo:<ms>` record with its one level of comments."""

    @property
    def content(self) -> str:
        return as_str(self.raw.get("content", self.raw.get("contents")))

    @property
    def comments(self) -> list[dict[str, Any]]:
        comments = self.raw.get("comments")
        if not isinstance(comments, list):
            return []
        return [comment for comment in comments if isinstance(comment, dict)]


@dataclass
class History(Record):
    """A `his:<ms>` record: one change-history entry."""

    @property
    def update_type(self) -> str:
        return as_str(self.raw.get("updateType")) or "UNKNOWN"


@dataclass
class Order(Record):
    """An `order:<ms>` record."""


@dataclass
class Group(Record):
    """A `project:institute:*` record: the owner group or a shared group."""

    @property
    def group_id(self) -> str:
        return as_str(self.raw.get("group_id", self.raw.get("groupId")))


@dataclass
class ProjectRecords:
    """All records of one project, split by sort-key prefix.

    `unknown` contains records whose `sk` matches no documented prefix; they are
    kept so a newer server does not lose data, but the mount does not show them.
    """

    project_id: str
    info: Project | None = None
    memos: list[Memo] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    histories: list[History] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    unknown: list[Record] = field(default_factory=list)


def split_records(project_id: str, items: list[dict[str, Any]]) -> ProjectRecords:
    """Classify the objects of `GET /project/{_id}` by `sk` prefix, keeping server order.

    Objects that are not JSON objects or lack an `sk` are skipped with a
    warning; the caller decides whether an empty result means "not found".
    """
    records = ProjectRecords(project_id=project_id)

    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("sk"), str):
            logger.warning("project %s: skipped a record without an sk: %.200r", project_id, item)
            continue

        sk = item["sk"]
        if sk == SK_PROJECT:
            records.info = Project(item)
        elif sk.startswith(SK_GROUP_PREFIX):
            records.groups.append(Group(item))
        elif sk.startswith(SK_MEMO_PREFIX):
            records.memos.append(Memo(item))
        elif sk.startswith(SK_ATTACHMENT_PREFIX):
            records.attachments.append(Attachment(item))
        elif sk.startswith(SK_HISTORY_PREFIX):
            records.histories.append(History(item))
        elif sk.startswith(SK_ORDER_PREFIX):
            records.orders.append(Order(item))
        else:
            records.unknown.append(Record(item))

    return records
