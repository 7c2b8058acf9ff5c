"""The RAYTeams Project API: HTTP client, typed records and download streams."""

from __future__ import annotations

import logging

from rayfs.api.client import DEFAULT_TIMEOUT, REGIONS, ApiClient, base_url_for_region
from rayfs.api.downloads import DownloadLink, RangeStream
from rayfs.api.records import (
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
from rayfs.api.retry import RetryPolicy

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "REGIONS",
    "ApiClient",
    "Attachment",
    "DownloadLink",
    "Group",
    "History",
    "Memo",
    "Order",
    "Project",
    "ProjectRecords",
    "RangeStream",
    "Record",
    "RetryPolicy",
    "base_url_for_region",
    "split_records",
]
