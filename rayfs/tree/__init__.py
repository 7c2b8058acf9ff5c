"""Path logic: names, entries and file contents of the mount, with no HTTP and no FUSE."""

from rayfs.tree.entries import Entry, Kind
from rayfs.tree.tree import RecordSource, Tree

__all__ = ["Entry", "Kind", "RecordSource", "Tree"]
