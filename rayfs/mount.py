"""The FUSE operations of rayfs: path in, tree or store call, result or errno out.

This module only translates. Every callback runs inside `_translate`, the one
place where exceptions become errno values (`errno_for`). An unexpected
exception is logged with its traceback and becomes EIO, so no callback error
ever ends the process.

New files in a project's attachments/ folder go to the uploads layer, which
stages them on local disk and uploads them in the background.

Caveats:
- Times set with `touch` or `utimens` on server records are refused (EACCES):
  records keep the server's times. Staged files take any time, and keep it
  after their upload.
- `chmod` and `chown` of anything in attachments/ (uploaded or not), and
  `utimens` of an attachments/ folder, succeed and change nothing, because
  `rsync -a` and `cp -p` call them on every file and folder they copy.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from typing import Any, Callable

import mfusepy

from rayfs.errors import (
    AlreadyExists,
    ApiError,
    AuthError,
    Busy,
    ConfigError,
    CrossDevice,
    IsADirectory,
    NoAttribute,
    NoSuchPath,
    NotADirectory,
    NotFoundError,
    NotPermitted,
    NotSupported,
    ReadOnly,
    RayfsError,
)
from rayfs.store import AttachmentReader, Store
from rayfs.tree import Entry, Kind, Tree
from rayfs.tree.tree import split_path
from rayfs.uploads import UploadManager

logger = logging.getLogger(__name__)

XATTR_MIME_TYPE = "user.mime_type"
XATTR_ID = "user.rayteams.id"
XATTR_SK = "user.rayteams.sk"
XATTR_UPLOAD = "user.rayfs.upload"

# Special nanosecond values libfuse passes to utimens for "now" and "leave unchanged".
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND

BLOCK_UNIT = 512
PREFERRED_IO_SIZE = 128 * 1024


# The one errno mapping of the mount, checked in order: the first matching class wins.
ERRNO_BY_ERROR: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    ((NoSuchPath, NotFoundError), errno.ENOENT),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (ReadOnly, errno.EACCES),
    (NotPermitted, errno.EPERM),
    (NoAttribute, errno.ENODATA),
    (AlreadyExists, errno.EEXIST),
    (Busy, errno.EBUSY),
    (CrossDevice, errno.EXDEV),
    (NotSupported, errno.ENOTSUP),
    # The server refused our credentials: to the program this is a permission problem.
    (AuthError, errno.EACCES),
    (ConfigError, errno.EINVAL),
)


def errno_for(exc: BaseException) -> int:
    """Map an exception to the errno that a FUSE callback returns; EIO for anything unexpected."""
    for error_class, number in ERRNO_BY_ERROR:
        if isinstance(exc, error_class):
            return number
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return errno.EIO


def one_line(exc: BaseException) -> str:
    """Return an error message with line breaks escaped, so a file name cannot split or forge log lines."""
    return str(exc).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


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
            logger.debug("%s %r: %s", method.__name__, path, one_line(exc))
            raise mfusepy.FuseOSError(errno_for(exc)) from exc
        except (ReadOnly, NotPermitted, NotADirectory, IsADirectory, AlreadyExists, Busy, CrossDevice, NotSupported) as exc:
            logger.info("%s %r rejected: %s", method.__name__, path, one_line(exc))
            raise mfusepy.FuseOSError(errno_for(exc)) from exc
        except (ApiError, RayfsError) as exc:
            logger.warning("%s %r failed: %s", method.__name__, path, one_line(exc))
            raise mfusepy.FuseOSError(errno_for(exc)) from exc
        except Exception as exc:
            logger.exception("%s %r failed unexpectedly", method.__name__, path)
            raise mfusepy.FuseOSError(errno.EIO) from exc

    return wrapper


class OpenFile:
    """One open file handle: generated content, an attachment reader or a staged upload."""

    def __init__(self, entry: Entry, reader: AttachmentReader | None = None, upload_handle: int | None = None):
        self.entry = entry
        self.reader = reader
        self.upload_handle = upload_handle


class RayfsOperations(mfusepy.Operations):
    """FUSE callbacks of a rayfs mount."""

    use_ns = True

    def __init__(
        self,
        tree: Tree,
        store: Store,
        uploads: UploadManager | None = None,
        *,
        on_ready: Callable[[], None] | None = None,
        on_destroy: Callable[[], None] | None = None,
        spool_dir: str = "",
    ):
        self._tree = tree
        self._store = store
        self._uploads = uploads
        self._on_ready = on_ready
        self._on_destroy = on_destroy
        self._spool_dir = spool_dir
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._handles: dict[int, OpenFile] = {}
        self._handle_numbers = itertools.count(1)
        self._handles_lock = threading.Lock()

    # Life cycle

    def init(self, path: str) -> None:
        if self._uploads is not None:
            self._uploads.start()
        logger.info("mount is ready")
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        # A RELEASE still queued when the loop stopped never arrives: close those handles here,
        # or their files would count as open for writing and never upload.
        with self._handles_lock:
            leftover = list(self._handles.values())
            self._handles.clear()
        for handle in leftover:
            try:
                if handle.upload_handle is not None:
                    self._uploads.release(handle.upload_handle)
                elif handle.reader is not None:
                    handle.reader.close()
            except Exception:
                logger.exception("closing a file left open at unmount failed: %s", handle.entry.name)

        logger.info("unmounted: saving the content cache")
        try:
            self._store.close()
        except Exception:
            logger.exception("saving the content cache failed")
        if self._on_destroy is not None:
            self._on_destroy()

    # Reading

    @_translate
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        # fstat() of an open file describes that file, even if a listing refresh moved its name elsewhere.
        with self._handles_lock:
            handle = self._handles.get(fh.fh) if fh is not None else None
        if handle is not None and handle.upload_handle is None:
            return self._attributes(handle.entry)
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

        if entry.staged is not None:
            upload_handle = self._uploads.open(
                entry.project_id,
                entry.name,
                truncate=bool(fi.flags & os.O_TRUNC),
                write=bool(fi.flags & WRITE_FLAGS),
            )
            fi.fh = self._add_handle(OpenFile(entry, upload_handle=upload_handle))
            fi.keep_cache = 0
            return 0

        if fi.flags & WRITE_FLAGS:
            raise ReadOnly(f"{path} is read-only: server records and attachments cannot be changed")
        reader = self._store.open_attachment(entry.attachment) if entry.attachment is not None else None
        fi.fh = self._add_handle(OpenFile(entry, reader=reader))
        # Attachments never change, so the kernel may keep their pages across opens.
        fi.keep_cache = 1 if reader is not None else 0
        return 0

    @_translate
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        if self._uploads is None:
            raise ReadOnly(f"cannot create {path}: uploads are turned off")
        project_id, name = self._tree.upload_target(path)
        upload_handle = self._uploads.create(project_id, name)
        entry = self._tree.lookup(path)
        fi.fh = self._add_handle(OpenFile(entry, upload_handle=upload_handle))
        return 0

    @_translate
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        handle = self._handle(fi.fh)
        if handle.upload_handle is not None:
            return self._uploads.read(handle.upload_handle, offset, size)
        if handle.reader is not None:
            return handle.reader.read(offset, size)
        content = handle.entry.content or b""
        return content[offset : offset + size]

    @_translate
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        handle = self._handle(fi.fh)
        if handle.upload_handle is None:
            raise ReadOnly(f"cannot write {path}: it is read-only")
        return self._uploads.write(handle.upload_handle, offset, data)

    @_translate
    def flush(self, path: str, fi: Any) -> int:
        handle = self._handle(fi.fh)
        if handle.upload_handle is not None:
            # close() waits for this: the bytes are safe in the spool once it returns.
            self._uploads.flush(handle.upload_handle)
        return 0

    @_translate
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        return self.flush(path, fi)

    @_translate
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is None:
            return 0
        if handle.upload_handle is not None:
            self._uploads.release(handle.upload_handle)
        elif handle.reader is not None:
            handle.reader.close()
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
        # Free space is the spool's: that is where new files go before their upload.
        spool = os.statvfs(self._spool_dir) if self._spool_dir else None
        return {
            "f_bsize": PREFERRED_IO_SIZE,
            "f_frsize": spool.f_frsize if spool else BLOCK_UNIT,
            "f_blocks": spool.f_blocks if spool else 0,
            "f_bfree": spool.f_bfree if spool else 0,
            "f_bavail": spool.f_bavail if spool else 0,
            "f_files": 0,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # Changes: staged files change freely; everything else is refused with the reason in the log.

    @_translate
    def mkdir(self, path: str, mode: int) -> int:
        raise ReadOnly(f"cannot create folder {path}: the mount's folders come from the server")

    @_translate
    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise ReadOnly(f"cannot create {path}: only regular files can be uploaded")

    @_translate
    def symlink(self, target: str, source: str) -> int:
        raise ReadOnly(f"cannot create symlink {target}: only regular files can be uploaded")

    @_translate
    def link(self, target: str, source: str) -> int:
        raise ReadOnly(f"cannot create hard link {target}: only regular files can be uploaded")

    @_translate
    def unlink(self, path: str) -> int:
        entry = self._tree.lookup(path)
        if entry.staged is not None:
            self._uploads.unlink(entry.project_id, entry.name)
            return 0
        raise NotPermitted(f"cannot delete {path}: the RAYTeams API has no call to delete records or attachments")

    @_translate
    def rmdir(self, path: str) -> int:
        self._tree.lookup(path)
        raise NotPermitted(f"cannot delete folder {path}: its contents come from the server, and the RAYTeams API has no call to delete them")

    @_translate
    def rename(self, old: str, new: str) -> int:
        entry = self._tree.lookup(old)
        if entry.staged is None:
            raise NotPermitted(f"cannot rename {old}: the RAYTeams API has no call to rename records or attachments")
        if split_path(old)[:-1] != split_path(new)[:-1]:
            raise CrossDevice(f"cannot move {old} to {new}: a file waiting for upload stays in its attachments/ folder")

        try:
            target = self._tree.lookup(new)
        except NoSuchPath:
            target = None
        if target is not None and target.staged is None:
            raise NotPermitted(f"cannot rename {old} to {new}: uploaded attachments cannot be replaced")
        if target is None:
            # Checks the new name as if the file were created under it.
            self._tree.upload_target(new)
        self._uploads.rename(entry.project_id, entry.name, split_path(new)[-1])
        return 0

    @_translate
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        entry = self._tree.lookup(path)
        if entry.staged is None:
            raise ReadOnly(f"cannot truncate {path}: server records and attachments cannot be changed")
        self._uploads.truncate(entry.project_id, entry.name, length)
        return 0

    @_translate
    def chmod(self, path: str, mode: int) -> int:
        if not self._in_attachments(path):
            raise ReadOnly(f"cannot change the mode of {path}: modes show what the server allows")
        return 0

    @_translate
    def chown(self, path: str, uid: int, gid: int) -> int:
        if not self._in_attachments(path):
            raise ReadOnly(f"cannot change the owner of {path}")
        return 0

    @_translate
    def utimens(self, path: str, times: Any = None) -> int:
        entry = self._tree.lookup(path)
        if entry.writable_dir:
            return 0
        if entry.staged is None:
            raise ReadOnly(f"cannot set the times of {path}: they are the server's record times")

        mtime_ns = times[1] if times else UTIME_NOW
        if mtime_ns == UTIME_OMIT:
            return 0
        if mtime_ns == UTIME_NOW:
            mtime_ns = time.time_ns()
        self._uploads.set_mtime(entry.project_id, entry.name, mtime_ns)
        return 0

    # ENOTSUP, not EACCES: `cp -p`, `cp -a` and `mv` copy ACLs and xattrs and skip them
    # quietly only on ENOTSUP.
    @_translate
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._tree.lookup(path)
        raise NotSupported(f"cannot set attribute {name} on {path}: attributes come from the server")

    @_translate
    def removexattr(self, path: str, name: str) -> int:
        self._tree.lookup(path)
        raise NotSupported(f"cannot remove attribute {name} from {path}: attributes come from the server")

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

    def _in_attachments(self, path: str) -> bool:
        """Return True for an attachments/ folder of a live project and the files in it."""
        entry = self._tree.lookup(path)
        if entry.writable_dir or entry.staged is not None:
            return True
        parent = self._tree.lookup(path.rsplit("/", 1)[0] or "/")
        return entry.attachment is not None and parent.writable_dir

    def _add_handle(self, handle: OpenFile) -> int:
        with self._handles_lock:
            number = next(self._handle_numbers)
            self._handles[number] = handle
        return number

    def _handle(self, number: int) -> OpenFile:
        with self._handles_lock:
            handle = self._handles.get(number)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return handle

    def _xattrs(self, entry: Entry) -> dict[str, str]:
        values: dict[str, str] = {}
        if entry.kind is Kind.SYMLINK:
            # Linux allows no user.* attributes on symlinks, so listing any would break `rsync -X`.
            return values
        if entry.staged is not None:
            state = entry.staged.state
            values[XATTR_UPLOAD] = f"failed: {entry.staged.reason}" if state == "failed" else state
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
