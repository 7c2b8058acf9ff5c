"""Directory entries: what `stat`, `readdir` and `read` see for one path."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

from rayfs.api.records import Attachment

ROOT_INODE = 1

# Permission bits of the contract: everything is read-only except attachments/.
MODE_FILE = 0o444
MODE_DIR = 0o555
MODE_WRITABLE_DIR = 0o755
MODE_SYMLINK = 0o777
# A file written into attachments/ that is not uploaded yet: still the user's to change.
MODE_STAGED = 0o644


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"


def inode_for(project_id: str, sk: str, role: str) -> int:
    """Derive a stable inode number from a record's `(_id, sk)` and the entry's role.

    The role distinguishes the entries of one record (a project's folder and its
    info.json, a memo's .json and .html). The result is a positive 63-bit
    number above the root's, so it is the same on every mount.
    """
    digest = hashlib.blake2b(f"{project_id}\0{sk}\0{role}".encode(), digest_size=8).digest()
    number = int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
    return max(number, ROOT_INODE + 1)


@dataclass
class Entry:
    """One file, folder or symlink of the mount.

    Files carry `content` (generated JSON or HTML, held in memory),
    `attachment` (bytes read through the download link) or `staged` (a file
    written into attachments/ and not uploaded yet, a `StagedFile` of the
    uploads layer). `mtime_ns` is the record's time in nanoseconds since the
    epoch.
    """

    name: str
    kind: Kind
    inode: int
    mode: int
    mtime_ns: int
    size: int = 0
    project_id: str = ""
    sk: str = ""
    mime_type: str = ""
    content: bytes | None = field(default=None, repr=False)
    attachment: Attachment | None = None
    target: str = ""
    staged: Any = None
    # Folders: the number of subfolders, for st_nlink.
    subdirs: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def writable_dir(self) -> bool:
        """True for `attachments/` folders, the only place where files may be created."""
        return self.kind is Kind.DIR and self.mode == MODE_WRITABLE_DIR


def millis_to_ns(millis: int) -> int:
    return max(0, millis) * 1_000_000
