"""Path logic: the records of `store` as a folder tree.

`Tree` resolves a path to an `Entry` and lists folders. It makes no HTTP
request itself but calls the store, which serves from its TTL caches or fetches.
Names are assigned per listing with the collision rule of `names.assign_names`,
and a listing's index is rebuilt only when the store hands out a new record list.

Caveats:
- A project that the list shows but whose `GET /project/{_id}` returns no
  records is reported as a malformed response (EIO), not as a missing folder,
  because the two API responses contradict each other.
- Lookups of file-manager probe names are answered from cached listings only,
  so they never cause a request. A probe before the first listing gets ENOENT.
- A staged file (written into attachments/, not uploaded yet) hides a server
  attachment of the same name that appears while it waits; after its upload
  the collision rule names both.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachetools import LRUCache

from rayfs.api.records import Attachment, Project, ProjectRecords, Record
from rayfs.errors import AlreadyExists, MalformedResponse, NoSuchPath, NotADirectory, NotFoundError, ReadOnly
from rayfs.tree import names, render
from rayfs.tree.entries import (
    MODE_DIR,
    MODE_FILE,
    MODE_STAGED,
    MODE_SYMLINK,
    MODE_WRITABLE_DIR,
    ROOT_INODE,
    Entry,
    Kind,
    inode_for,
    millis_to_ns,
)

logger = logging.getLogger(__name__)

TRASH_DIR = ".trash"
BY_ID_DIR = ".by-id"
INFO_FILE = "info.json"
GROUPS_FILE = "groups.json"
MEMOS_DIR = "memos"
HISTORY_DIR = "history"
ORDERS_DIR = "orders"
ATTACHMENTS_DIR = "attachments"

PROJECT_CHILDREN = (INFO_FILE, GROUPS_FILE, MEMOS_DIR, HISTORY_DIR, ORDERS_DIR, ATTACHMENTS_DIR)
SECTION_DIRS = (MEMOS_DIR, HISTORY_DIR, ORDERS_DIR, ATTACHMENTS_DIR)

# Root names that a project folder may not take.
RESERVED_ROOT_NAMES = {TRASH_DIR, BY_ID_DIR}

MIME_JSON = "application/json"
MIME_HTML = "text/html"
MIME_DIRECTORY = "inode/directory"
MIME_SYMLINK = "inode/symlink"
MIME_UNKNOWN = "application/octet-stream"

# How many projects keep a built index in memory.
PROJECT_INDEX_CACHE_SIZE = 256


class StagedSource(Protocol):
    """The uploads layer as the tree uses it: files written into attachments/ and not uploaded yet."""

    def staged(self, project_id: str) -> list[Any]: ...

    def find(self, project_id: str, name: str) -> Any | None: ...


class MtimeSource(Protocol):
    """Modification times that users set on files before they were uploaded, by `(_id, sk)`."""

    def get(self, project_id: str, sk: str) -> int | None: ...


class RecordSource(Protocol):
    """The store as the tree uses it.

    With `cached_only=True` a method returns cached data, stale or not, and
    None when nothing is cached; it never makes a request.
    """

    def projects(self, *, cached_only: bool = False) -> list[Project] | None: ...

    def project_records(self, project_id: str, *, cached_only: bool = False) -> ProjectRecords | None: ...


def split_path(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def attachment_mime_type(attachment: Attachment, name: str) -> str:
    """Return the attachment's `filetype` when it is a MIME type, else a guess from its name."""
    filetype = attachment.filetype.strip()
    if "/" in filetype:
        return filetype
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or MIME_UNKNOWN


@dataclass
class RootIndex:
    """Project folder names of one `GET /project` listing."""

    live: dict[str, Project] = field(default_factory=dict)
    trash: dict[str, Project] = field(default_factory=dict)
    # Lookup keys (NFC) to listed names, for clients that send NFD.
    live_keys: dict[str, str] = field(default_factory=dict)
    trash_keys: dict[str, str] = field(default_factory=dict)
    # Project id to the folder's path relative to the root, and the project.
    paths_by_id: dict[str, str] = field(default_factory=dict)
    projects_by_id: dict[str, Project] = field(default_factory=dict)
    mtime_ns: int = 0
    trash_mtime_ns: int = 0


@dataclass
class ProjectIndex:
    """The files of one project, built from one `GET /project/{_id}` response."""

    sections: dict[str, dict[str, Entry]]
    section_keys: dict[str, dict[str, str]]
    files: dict[str, Entry]


class Tree:
    """Resolves paths of the mount to entries, using a `RecordSource`."""

    def __init__(
        self, store: RecordSource, *, uploads: StagedSource | None = None, mtimes: MtimeSource | None = None
    ):
        self._store = store
        self._uploads = uploads
        self._mtimes = mtimes
        self._lock = threading.Lock()
        self._root: tuple[list[Project] | None, RootIndex | None] = (None, None)
        self._projects: LRUCache = LRUCache(maxsize=PROJECT_INDEX_CACHE_SIZE)

    # Public interface

    def lookup(self, path: str) -> Entry:
        """Return the entry at `path`, raising NoSuchPath when there is none."""
        parts = split_path(path)
        cached_only = any(names.is_probe_name(part) for part in parts)
        return self._resolve(parts, cached_only=cached_only)

    def list_dir(self, path: str) -> list[Entry]:
        """Return the entries of the folder at `path`, in a stable order."""
        parts = split_path(path)
        entry = self._resolve(parts, cached_only=False)
        if not entry.is_dir:
            raise NotADirectory(f"not a folder: {path}")

        if not parts:
            root = self._root_index(cached_only=False)
            entries = [self._trash_dir(root), self._by_id_dir(root)]
            entries += [self._project_dir(name, project) for name, project in root.live.items()]
            return entries

        if parts == [TRASH_DIR]:
            root = self._root_index(cached_only=False)
            return [self._project_dir(name, project) for name, project in root.trash.items()]

        if parts == [BY_ID_DIR]:
            root = self._root_index(cached_only=False)
            return [self._by_id_link(project_id, root) for project_id in root.paths_by_id]

        project, rest = self._project_and_rest(parts, cached_only=False)
        if not rest:
            return [self._project_child(project, child, cached_only=False) for child in PROJECT_CHILDREN]

        index = self._project_index(project, cached_only=False)
        entries = index.sections[rest[0]]
        if rest[0] != ATTACHMENTS_DIR:
            return list(entries.values())

        staged = {entry.name: entry for entry in self._staged_entries(project)}
        return [entry for name, entry in entries.items() if name not in staged] + list(staged.values())

    def upload_target(self, path: str) -> tuple[str, str]:
        """Return `(project_id, name)` for a new file at `path`, or raise why it cannot be created there.

        New files may only be created in the attachments/ folder of a project
        that is not in the trash, under a name no server attachment has.
        """
        parts = split_path(path)
        if len(parts) < 2 or parts[-2] != ATTACHMENTS_DIR or parts[0] == BY_ID_DIR:
            raise ReadOnly(f"cannot create {path}: new files can only go into a project's attachments/ folder")
        name = parts[-1]
        if names.is_probe_name(name):
            raise ReadOnly(f"cannot create {path}: file-manager metadata files are not uploaded")
        if names.safe_name(name, fallback="invalid name") != name:
            raise ReadOnly(f"cannot create {path}: the name is not valid for an attachment")

        project, rest = self._project_and_rest(parts[:-1], cached_only=False)
        if rest != [ATTACHMENTS_DIR] or project.istrash:
            raise ReadOnly(f"cannot create {path}: projects in the trash are read-only")

        index = self._project_index(project, cached_only=False)
        attachments = index.sections[ATTACHMENTS_DIR]
        if name in attachments or names.lookup_key(name) in index.section_keys[ATTACHMENTS_DIR]:
            raise AlreadyExists(f"{path} is an uploaded attachment and cannot be replaced")
        return project.id, name

    def _staged_entries(self, project: Project) -> list[Entry]:
        if self._uploads is None:
            return []
        return [staged_entry(staged) for staged in self._uploads.staged(project.id)]

    def _find_staged(self, project: Project, name: str) -> Entry | None:
        if self._uploads is None:
            return None
        staged = self._uploads.find(project.id, name)
        return staged_entry(staged) if staged is not None else None

    # Resolution

    def _resolve(self, parts: list[str], *, cached_only: bool) -> Entry:
        if not parts:
            return self._root_dir(self._root_index(cached_only=cached_only))

        root = self._root_index(cached_only=cached_only)
        if parts == [TRASH_DIR]:
            return self._trash_dir(root)

        if parts[0] == BY_ID_DIR:
            return self._resolve_by_id(parts, root)

        project, rest = self._project_and_rest(parts, cached_only=cached_only)
        if not rest:
            return self._project_dir(self._folder_name(project, root), project)

        if rest[0] not in PROJECT_CHILDREN:
            raise NoSuchPath(f"no entry {rest[0]!r} in project {project.id}")
        if len(rest) == 1:
            return self._project_child(project, rest[0], cached_only=cached_only)
        if len(rest) > 2 or rest[0] not in SECTION_DIRS:
            raise NoSuchPath(f"no entry {'/'.join(rest)!r} in project {project.id}")

        if rest[0] == ATTACHMENTS_DIR:
            staged = self._find_staged(project, rest[1])
            if staged is not None:
                return staged

        index = self._project_index(project, cached_only=cached_only)
        section = index.sections[rest[0]]
        name = rest[1]
        if name not in section:
            name = index.section_keys[rest[0]].get(names.lookup_key(name), name)
        if name not in section:
            raise NoSuchPath(f"no entry {rest[1]!r} in {rest[0]}/ of project {project.id}")
        return section[name]

    def _resolve_by_id(self, parts: list[str], root: RootIndex) -> Entry:
        if len(parts) == 1:
            return self._by_id_dir(root)
        if len(parts) == 2 and parts[1] in root.paths_by_id:
            return self._by_id_link(parts[1], root)
        # The kernel follows the symlink itself, so deeper paths never arrive here.
        raise NoSuchPath(f"no project with id {parts[1]!r}")

    def _project_and_rest(self, parts: list[str], *, cached_only: bool) -> tuple[Project, list[str]]:
        root = self._root_index(cached_only=cached_only)
        if parts[0] == TRASH_DIR:
            folders, keys, rest = root.trash, root.trash_keys, parts[1:]
            if not rest:
                raise NoSuchPath(".trash is not a project")
        else:
            folders, keys, rest = root.live, root.live_keys, parts

        name = rest[0]
        if name not in folders:
            name = keys.get(names.lookup_key(name), name)
        project = folders.get(name)
        if project is None:
            raise NoSuchPath(f"no project folder {rest[0]!r}")
        return project, rest[1:]

    def _folder_name(self, project: Project, root: RootIndex) -> str:
        return root.paths_by_id[project.id].rsplit("/", 1)[-1]

    # Root index

    def _root_index(self, *, cached_only: bool) -> RootIndex:
        projects = self._store.projects(cached_only=cached_only)
        if projects is None:
            raise NoSuchPath("the project list is not cached yet")

        with self._lock:
            cached_list, cached_index = self._root
            if cached_list is projects and cached_index is not None:
                return cached_index

        index = build_root_index(projects)
        with self._lock:
            self._root = (projects, index)
        return index

    def _project_index(self, project: Project, *, cached_only: bool) -> ProjectIndex:
        try:
            records = self._store.project_records(project.id, cached_only=cached_only)
        except NotFoundError as exc:
            raise MalformedResponse(
                f"project {project.id} is listed by GET /project but GET /project/{project.id} returned no records"
            ) from exc
        if records is None:
            raise NoSuchPath(f"records of project {project.id} are not cached yet")

        with self._lock:
            cached = self._projects.get(project.id)
            if cached is not None and cached[0] is records and cached[1] is project:
                return cached[2]

        index = build_project_index(project, records, mtimes=self._mtimes)
        with self._lock:
            self._projects[project.id] = (records, project, index)
        return index

    # Entries

    def _root_dir(self, root: RootIndex) -> Entry:
        return Entry(
            name="/",
            kind=Kind.DIR,
            inode=ROOT_INODE,
            mode=MODE_DIR,
            mtime_ns=root.mtime_ns,
            mime_type=MIME_DIRECTORY,
            subdirs=len(root.live) + 2,
        )

    def _trash_dir(self, root: RootIndex) -> Entry:
        return Entry(
            name=TRASH_DIR,
            kind=Kind.DIR,
            inode=inode_for("", "", TRASH_DIR),
            mode=MODE_DIR,
            mtime_ns=root.trash_mtime_ns,
            mime_type=MIME_DIRECTORY,
            subdirs=len(root.trash),
        )

    def _by_id_dir(self, root: RootIndex) -> Entry:
        return Entry(
            name=BY_ID_DIR,
            kind=Kind.DIR,
            inode=inode_for("", "", BY_ID_DIR),
            mode=MODE_DIR,
            mtime_ns=root.mtime_ns,
            mime_type=MIME_DIRECTORY,
        )

    def _by_id_link(self, project_id: str, root: RootIndex) -> Entry:
        target = "../" + root.paths_by_id[project_id]
        mtime_ns = millis_to_ns(root.projects_by_id[project_id].updated)
        return Entry(
            name=project_id,
            kind=Kind.SYMLINK,
            inode=inode_for(project_id, "project", "by-id"),
            mode=MODE_SYMLINK,
            mtime_ns=mtime_ns,
            size=len(target.encode()),
            project_id=project_id,
            sk="project",
            mime_type=MIME_SYMLINK,
            target=target,
        )

    def _project_dir(self, name: str, project: Project) -> Entry:
        return Entry(
            name=name,
            kind=Kind.DIR,
            inode=inode_for(project.id, "project", "dir"),
            mode=MODE_DIR,
            mtime_ns=millis_to_ns(project.updated),
            project_id=project.id,
            sk="project",
            mime_type=MIME_DIRECTORY,
            subdirs=len(SECTION_DIRS),
        )

    def _project_child(self, project: Project, child: str, *, cached_only: bool) -> Entry:
        if child in SECTION_DIRS:
            writable = child == ATTACHMENTS_DIR and not project.istrash
            return Entry(
                name=child,
                kind=Kind.DIR,
                inode=inode_for(project.id, "", child),
                mode=MODE_WRITABLE_DIR if writable else MODE_DIR,
                mtime_ns=millis_to_ns(project.updated),
                project_id=project.id,
                mime_type=MIME_DIRECTORY,
            )
        return self._project_index(project, cached_only=cached_only).files[child]


def build_root_index(projects: list[Project]) -> RootIndex:
    """Name the project folders of one listing, live and trashed apart."""
    index = RootIndex()
    seen: set[str] = set()
    live: list[Project] = []
    trash: list[Project] = []

    for project in projects:
        if not project.id:
            logger.warning("skipped a project without an _id: %.200r", project.raw)
            continue
        if project.id in seen:
            logger.warning("project %s is listed twice; showing the first", project.id)
            continue
        seen.add(project.id)
        (trash if project.istrash else live).append(project)

    for name, project in _assign_project_names(live, reserved=RESERVED_ROOT_NAMES):
        index.live[name] = project
        index.live_keys[names.lookup_key(name)] = name
        index.paths_by_id[project.id] = name
        index.projects_by_id[project.id] = project

    for name, project in _assign_project_names(trash, reserved=set()):
        index.trash[name] = project
        index.trash_keys[names.lookup_key(name)] = name
        index.paths_by_id[project.id] = f"{TRASH_DIR}/{name}"
        index.projects_by_id[project.id] = project

    index.mtime_ns = max((millis_to_ns(project.updated) for project in projects), default=0)
    index.trash_mtime_ns = max((millis_to_ns(project.updated) for project in trash), default=0)
    return index


def _assign_project_names(projects: list[Project], *, reserved: set[str]) -> list[tuple[str, Project]]:
    def folder_name(project: Project) -> str:
        name = names.safe_name(project.name, fallback=project.id)
        if name in reserved:
            # A project named ".trash" must not hide the real .trash folder.
            name = "\uff0e" + name[1:]
        return name

    pairs = names.assign_names(
        projects,
        name_of=folder_name,
        order_key=lambda project: (project.created, project.id),
        suffix_of=lambda project: names.safe_name(project.id[:8], fallback="project"),
        keep_extension=False,
    )
    return [(name, project) for project, name in pairs]


def staged_entry(staged: Any) -> Entry:
    """Return the entry of a file written into attachments/ that is not uploaded yet."""
    guessed, _ = mimetypes.guess_type(staged.name, strict=False)
    return Entry(
        name=staged.name,
        kind=Kind.FILE,
        inode=staged.inode,
        mode=MODE_STAGED,
        mtime_ns=staged.mtime_ns,
        size=staged.size,
        project_id=staged.project_id,
        mime_type=guessed or MIME_UNKNOWN,
        staged=staged,
    )


def build_project_index(project: Project, records: ProjectRecords, *, mtimes: MtimeSource | None = None) -> ProjectIndex:
    """Build the files of one project: info.json, groups.json and the four section folders."""
    info = records.info or project
    updated_ns = millis_to_ns(info.updated)
    files = {
        INFO_FILE: _generated_file(
            INFO_FILE, project.id, "project", "info.json", render.json_bytes(info.raw), updated_ns, MIME_JSON
        ),
        GROUPS_FILE: _generated_file(
            GROUPS_FILE,
            project.id,
            "",
            "groups.json",
            render.json_bytes([group.raw for group in records.groups]),
            updated_ns,
            MIME_JSON,
        ),
    }

    memos: dict[str, Entry] = {}
    for name, memo in _assign_stamped_names(records.memos, lambda memo, stamp: stamp):
        created_ns = millis_to_ns(memo.created or memo.sk_time)
        memos[name + ".json"] = _generated_file(
            name + ".json", project.id, memo.sk, "json", render.json_bytes(memo.raw), created_ns, MIME_JSON
        )
        page = render.memo_html(memo.raw, project_name=project.name)
        memos[name + ".html"] = _generated_file(name + ".html", project.id, memo.sk, "html", page, created_ns, MIME_HTML)

    history: dict[str, Entry] = {}
    label = lambda entry, stamp: f"{stamp} {names.safe_name(entry.update_type, fallback='UNKNOWN')}"  # noqa: E731
    for name, entry in _assign_stamped_names(records.histories, label):
        history[name + ".json"] = _record_file(name + ".json", project.id, entry)

    orders: dict[str, Entry] = {}
    for name, order in _assign_stamped_names(records.orders, lambda order, stamp: stamp):
        orders[name + ".json"] = _record_file(name + ".json", project.id, order)

    attachments: dict[str, Entry] = {}
    for attachment, name in names.assign_names(
        records.attachments,
        name_of=lambda item: names.safe_name(item.name, fallback=f"attachment {names.stamp(item.sk_time)}"),
        order_key=lambda item: (item.sk_time, item.sk),
        suffix_of=lambda item: names.stamp(item.sk_time),
        keep_extension=True,
    ):
        # A time the user set before uploading (rsync -a, cp -p) wins over the server's upload time.
        kept_mtime_ns = mtimes.get(project.id, attachment.sk) if mtimes is not None else None
        attachments[name] = Entry(
            name=name,
            kind=Kind.FILE,
            inode=inode_for(project.id, attachment.sk, "file"),
            mode=MODE_FILE,
            mtime_ns=kept_mtime_ns if kept_mtime_ns is not None else millis_to_ns(attachment.created or attachment.sk_time),
            size=attachment.size,
            project_id=project.id,
            sk=attachment.sk,
            mime_type=attachment_mime_type(attachment, name),
            attachment=attachment,
        )

    sections = {MEMOS_DIR: memos, HISTORY_DIR: history, ORDERS_DIR: orders, ATTACHMENTS_DIR: attachments}
    section_keys = {
        section: {names.lookup_key(name): name for name in entries} for section, entries in sections.items()
    }
    return ProjectIndex(sections=sections, section_keys=section_keys, files=files)


def _assign_stamped_names(records: list, label) -> list[tuple[str, Record]]:
    """Name records by their sort-key time; records with equal times get the sk as suffix."""
    pairs = names.assign_names(
        records,
        name_of=lambda record: label(record, names.stamp(record.sk_time)),
        order_key=lambda record: (record.sk_time, record.sk),
        suffix_of=lambda record: names.safe_name(record.sk, fallback="record"),
        keep_extension=False,
    )
    return [(name, record) for record, name in pairs]


def _record_file(name: str, project_id: str, record: Record) -> Entry:
    return _generated_file(
        name, project_id, record.sk, "json", render.json_bytes(record.raw), millis_to_ns(record.created or record.sk_time), MIME_JSON
    )


def _generated_file(
    name: str, project_id: str, sk: str, role: str, content: bytes, mtime_ns: int, mime_type: str
) -> Entry:
    return Entry(
        name=name,
        kind=Kind.FILE,
        inode=inode_for(project_id, sk, role),
        mode=MODE_FILE,
        mtime_ns=mtime_ns,
        size=len(content),
        project_id=project_id,
        sk=sk,
        mime_type=mime_type,
        content=content,
    )
