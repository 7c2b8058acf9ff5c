"""The FUSE operations of rayfs: path in, tree or store call, result or errno out.

This module only translates. Every callback runs inside `_translate`, the one
place where exceptions become errno values (`errno_for`); an unexpected
exception is logged with its traceback and becomes EIO, so no callback error
ever ends the process.

Caveats:
- Files cannot be created yet: `attachments/` shows mode 0755 as the contract
  says, but creating a file there is refused with EACCES until uploads exist.
- Times set with `touch` or `utimens` are refused (EACCES): records keep the
  server's times.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import threading
from typing import Any, Callable

import mfusepy

from rayfs.errors import (
    ApiError,
    AuthError,
    ConfigError,
    IsADirectory,
    NoAttribute,
    NoSuchPath,
    NotADirectory,
    NotFoundError,
    NotPermitted,
    ReadOnly,
    RayfsError,
)
from rayfs.store import AttachmentReader, Store
from rayfs.tree import Entry, Kind, Tree

logger = logging.getLogger(__name__)

XATTR_MIME_TYPE = "user.mime_type"
XATTR_ID = "user.rayteams.id"
XATTR_SK = "user.rayteams.sk"

BLOCK_UNIT = 512
PREFERRED_IO_SIZE = 128 * 1024


def errno_for(exc: BaseException) -> int:
    """Map an exception to the errno that a FUSE callback returns."""
    if isinstance(exc, (NoSuchPath, NotFoundError)):
        return errno.ENOENT
    if isinstance(exc, NotADirectory):
        return errno.ENOTDIR
    if isinstance(exc, IsADirectory):
        return errno.EISDIR
    if isinstance(exc, ReadOnly):
        return errno.EACCES
    if isinstance(exc, NotPermitted):
        return errno.EPERM
    if isinstance(exc, NoAttribute):
        return errno.ENODATA
    if isinstance(exc, AuthError):
        # The server refused our credentials: to the program this is a permission problem.
        return errno.EACCES
    if isinstance(exc, ConfigError):
        return errno.EINVAL
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return errno.EIO


def _translate(method: Callable) -> Callable:
    """Run a FUSE callback, turning every exception into a `FuseOSError`."""

    @functools.wraps(method)
    def wrapper(self, path, *args, **kwargs):
        logger.debug("%s %r", method.__name__, path)
        try:
            return method(self, path, *args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except (NoSuchPath, NotFoundError, NoAttribute) as exc:
            logger.debug("%s %r: %s", method.__name__, path, exc)
            raise mfusepy.FuseOSError(errno_for(exc)) from exc
        except (ReadOnly, NotPermitted, NotADirectory, IsADirectory) as exc:
            logger.info("%s %r refused: %s", method.__name__, path, exc)
            raise mfusepy.FuseOSError(errno_for(exc)) from exc
        except (ApiError, RayfsError) as exc:
            logger.warning("%s %r failed: %s", method.__name__, path, exc)
            raise mfusepy.FuseOSError(errno_for(exc)) from exc
        except Exception as exc:
            logger.exception("%s %r failed unexpectedly", method.__name__, path)
            raise mfusepy.FuseOSError(errno.EIO) from exc

    return wrapper


class OpenFile:
    """One open file handle: generated content or an attachment reader."""

    def __init__(self, entry: Entry, reader: AttachmentReader | None):
        self.entry = entry
        self.reader = reader

    def read(self, offset: int, size: int) -> bytes:
        if self.reader is not None:
            return self.reader.read(offset, size)
        content = self.entry.content or b""
        return content[offset : offset + size]

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


class RayfsOperations(mfusepy.Operations):
    """FUSE callbacks of a rayfs mount."""

    use_ns = True

    def __init__(self, tree: Tree, store: Store, *, on_ready: Callable[[], None] | None = None):
        self._tree = tree
        self._store = store
        self._on_ready = on_ready
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._handles: dict[int, OpenFile] = {}
        self._handle_numbers = itertools.count(1)
        self._handles_lock = threading.Lock()

    # Life cycle

    def init(self, path: str) -> None:
        logger.info("mount is ready")
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        logger.info("unmounting: saving the content cache")
        try:
            self._store.close()
        except Exception:
            logger.exception("saving the content cache failed")

    # Reading

    @_translate
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        return self._attributes(self._tree.lookup(path))

    @_translate
    def readdir(self, path: str, fh: Any) -> list:
        entries = self._tree.list_dir(path)
        listing: list = [(".", None, 0), ("..", None, 0)]
        for entry in entries:
            listing.append((entry.name, {"st_mode": self._file_type(entry), "st_ino": entry.inode}, 0))
        return listing

    @_translate
    def readlink(self, path: str) -> str:
        entry = self._tree.lookup(path)
        if entry.kind is not Kind.SYMLINK:
            raise mfusepy.FuseOSError(errno.EINVAL)
        return entry.target

    @_translate
    def open(self, path: str, fi: Any) -> int:
        entry = self._tree.lookup(path)
        if entry.is_dir:
            raise IsADirectory(f"{path} is a folder")
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise ReadOnly(f"{path} is read-only: server records and attachments cannot be changed")

        reader = self._store.open_attachment(entry.attachment) if entry.attachment is not None else None
        with self._handles_lock:
            number = next(self._handle_numbers)
            self._handles[number] = OpenFile(entry, reader)
        fi.fh = number
        # Attachments never change, so the kernel may keep their pages across opens.
        fi.keep_cache = 1 if reader is not None else 0
        return 0

    @_translate
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._handles_lock:
            handle = self._handles.get(fi.fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return handle.read(offset, size)

    @_translate
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            handle.close()
        return 0

    @_translate
    def opendir(self, path: str) -> int:
        entry = self._tree.lookup(path)
        if not entry.is_dir:
            raise NotADirectory(f"{path} is not a folder")
        return 0

    @_translate
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._xattrs(self._tree.lookup(path)).get(name)
        if value is None:
            raise NoAttribute(f"{path} has no attribute {name}")
        return value.encode()

    @_translate
    def listxattr(self, path: str) -> list[str]:
        return list(self._xattrs(self._tree.lookup(path)))

    @_translate
    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": PREFERRED_IO_SIZE,
            "f_frsize": BLOCK_UNIT,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": 0,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # Changes: refused until uploads exist, with the reason in the log.

    @_translate
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        raise ReadOnly(f"cannot create {path}: this version of rayfs cannot upload files")

    @_translate
    def mkdir(self, path: str, mode: int) -> int:
        raise ReadOnly(f"cannot create folder {path}: the mount's folders come from the server")

    @_translate
    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise ReadOnly(f"cannot create {path}: the mount holds only server records")

    @_translate
    def symlink(self, target: str, source: str) -> int:
        raise ReadOnly(f"cannot create symlink {target}: the mount holds only server records")

    @_translate
    def link(self, target: str, source: str) -> int:
        raise ReadOnly(f"cannot create hard link {target}: the mount holds only server records")

    @_translate
    def unlink(self, path: str) -> int:
        self._tree.lookup(path)
        raise NotPermitted(f"cannot delete {path}: the RAYTeams API has no call to delete records or attachments")

    @_translate
    def rmdir(self, path: str) -> int:
        self._tree.lookup(path)
        raise NotPermitted(f"cannot delete folder {path}: the RAYTeams API has no call to delete projects")

    @_translate
    def rename(self, old: str, new: str) -> int:
        self._tree.lookup(old)
        raise NotPermitted(f"cannot rename {old}: the RAYTeams API has no call to rename records or attachments")

    @_translate
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        raise ReadOnly(f"cannot write {path}: it is read-only")

    @_translate
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._tree.lookup(path)
        raise ReadOnly(f"cannot truncate {path}: server records and attachments cannot be changed")

    @_translate
    def chmod(self, path: str, mode: int) -> int:
        self._tree.lookup(path)
        raise ReadOnly(f"cannot change the mode of {path}: modes show what the server allows")

    @_translate
    def chown(self, path: str, uid: int, gid: int) -> int:
        self._tree.lookup(path)
        raise ReadOnly(f"cannot change the owner of {path}")

    @_translate
    def utimens(self, path: str, times: Any = None) -> int:
        self._tree.lookup(path)
        raise ReadOnly(f"cannot set the times of {path}: they are the server's record times")

    @_translate
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._tree.lookup(path)
        raise ReadOnly(f"cannot set attribute {name} on {path}: attributes come from the server")

    @_translate
    def removexattr(self, path: str, name: str) -> int:
        self._tree.lookup(path)
        raise ReadOnly(f"cannot remove attribute {name} from {path}: attributes come from the server")

    # Helpers

    def _file_type(self, entry: Entry) -> int:
        if entry.kind is Kind.DIR:
            return stat.S_IFDIR
        if entry.kind is Kind.SYMLINK:
            return stat.S_IFLNK
        return stat.S_IFREG

    def _attributes(self, entry: Entry) -> dict[str, Any]:
        return {
            "st_mode": self._file_type(entry) | entry.mode,
            "st_ino": entry.inode,
            "st_nlink": 2 + entry.subdirs if entry.is_dir else 1,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_size": entry.size,
            "st_blocks": (entry.size + BLOCK_UNIT - 1) // BLOCK_UNIT,
            "st_blksize": PREFERRED_IO_SIZE,
            "st_atime": entry.mtime_ns,
            "st_mtime": entry.mtime_ns,
            "st_ctime": entry.mtime_ns,
        }

    def _xattrs(self, entry: Entry) -> dict[str, str]:
        values = {}
        if entry.mime_type:
            values[XATTR_MIME_TYPE] = entry.mime_type
        if entry.project_id:
            values[XATTR_ID] = entry.project_id
        if entry.sk:
            values[XATTR_SK] = entry.sk
        return values


def run_fuse(operations: RayfsOperations, mountpoint: str, *, options: dict[str, Any]) -> None:
    """Mount `operations` at `mountpoint` and serve until unmounted (blocks)."""
    mfusepy.FUSE(
        operations,
        mountpoint,
        foreground=True,
        raw_fi=True,
        use_ino=True,
        default_permissions=True,
        # Not a bare word: mount(8) would show a same-named folder of the working directory instead.
        fsname="rayfs-mount",
        subtype="rayfs",
        **options,
    )
