"""The tree layer with a store filled by hand: names, entries, sizes and errors, without HTTP or FUSE."""

from __future__ import annotations

import json

import pytest

from rayfs.api.records import Project, split_records
from rayfs.errors import MalformedResponse, NoSuchPath, NotADirectory, NotFoundError
from rayfs.tree import Kind, Tree
from rayfs.tree.entries import MODE_DIR, MODE_FILE, MODE_WRITABLE_DIR, ROOT_INODE


class HandStore:
    """A record source filled by hand; counts how often each method fetched."""

    def __init__(self, projects: list[dict], records: dict[str, list[dict]]):
        self._projects = [Project(raw) for raw in projects]
        self._records = records
        self.fetches = 0
        self.cached = False

    def projects(self, *, cached_only: bool = False):
        if cached_only and not self.cached:
            return None
        self.fetches += not cached_only
        self.cached = True
        return self._projects

    def project_records(self, project_id: str, *, cached_only: bool = False):
        if cached_only:
            return None
        self.fetches += 1
        if not self._records.get(project_id):
            raise NotFoundError(f"no records for {project_id}")
        return split_records(project_id, self._records[project_id])


def project(project_id: str, name: str, *, created: int, trash: bool = False) -> dict:
    return {"_id": project_id, "sk": "project", "name": name, "istrash": trash, "created": created, "updated": created + 1}


def attachment(project_id: str, millis: int, name: str, size: int = 10) -> dict:
    return {"_id": project_id, "sk": f"attachments:{millis}", "filetype": "image/png", "name": name, "size": size, "created": millis}


@pytest.fixture
def store():
    first = project("11111111-a", "Case", created=100)
    second = project("22222222-b", "Case", created=200)
    trashed = project("33333333-c", "Old", created=50, trash=True)
    records = {
        "11111111-a": [
            first,
            {"_id": "11111111-a", "sk": "memo:1667454117029", "content": "<p>Hi</p>", "comments": [], "created": 1667454117029},
            attachment("11111111-a", 2000, "scan.stl"),
            attachment("11111111-a", 1000, "scan.stl"),
            {"_id": "11111111-a", "sk": "his:1669272896105", "updateType": "RAY_LINK_PROJECT_ADDMEMO", "created": 1669272896105},
            {"_id": "11111111-a", "sk": "project:institute:owner", "group_id": "g1"},
        ],
        "22222222-b": [second],
        "33333333-c": [trashed],
    }
    return HandStore([second, trashed, first], records)


def names_of(entries) -> list[str]:
    return [entry.name for entry in entries]


def test_root_lists_projects_and_special_folders(store):
    assert sorted(names_of(Tree(store).list_dir("/"))) == [".by-id", ".trash", "Case", "Case (22222222)"]


def test_trash_holds_trashed_projects(store):
    assert names_of(Tree(store).list_dir("/.trash")) == ["Old"]


def test_by_id_links_point_to_folders(store):
    tree = Tree(store)
    assert tree.lookup("/.by-id/22222222-b").target == "../Case (22222222)"
    assert tree.lookup("/.by-id/33333333-c").target == "../.trash/Old"
    assert tree.lookup("/.by-id/33333333-c").kind is Kind.SYMLINK


def test_project_folder_children(store):
    assert names_of(Tree(store).list_dir("/Case")) == [
        "info.json", "groups.json", "memos", "history", "orders", "attachments",
    ]


def test_modes_follow_contract(store):
    tree = Tree(store)
    assert tree.lookup("/").mode == MODE_DIR
    assert tree.lookup("/").inode == ROOT_INODE
    assert tree.lookup("/Case/memos").mode == MODE_DIR
    assert tree.lookup("/Case/attachments").mode == MODE_WRITABLE_DIR
    assert tree.lookup("/Case/info.json").mode == MODE_FILE


def test_equal_attachment_names_get_time_suffix(store):
    assert sorted(names_of(Tree(store).list_dir("/Case/attachments"))) == [
        "scan (1970-01-01T00-00-02.000Z).stl", "scan.stl",
    ]
    assert Tree(store).lookup("/Case/attachments/scan.stl").sk == "attachments:1000"


def test_memo_files_named_by_stamp(store):
    assert names_of(Tree(store).list_dir("/Case/memos")) == [
        "2022-11-03T05-41-57.029Z.json", "2022-11-03T05-41-57.029Z.html",
    ]


def test_history_name_carries_type(store):
    assert names_of(Tree(store).list_dir("/Case/history")) == ["2022-11-24T06-54-56.105Z RAY_LINK_PROJECT_ADDMEMO.json"]


def test_info_json_size_matches_content(store):
    entry = Tree(store).lookup("/Case/info.json")
    assert entry.size == len(entry.content)
    assert json.loads(entry.content) == project("11111111-a", "Case", created=100)


def test_groups_json_lists_groups(store):
    entry = Tree(store).lookup("/Case/groups.json")
    assert json.loads(entry.content) == [{"_id": "11111111-a", "sk": "project:institute:owner", "group_id": "g1"}]


def test_mtimes_are_record_times(store):
    tree = Tree(store)
    assert tree.lookup("/Case").mtime_ns == 101 * 1_000_000
    assert tree.lookup("/Case/attachments/scan.stl").mtime_ns == 1000 * 1_000_000


def test_inodes_differ_per_role(store):
    tree = Tree(store)
    inodes = {tree.lookup(path).inode for path in ("/Case", "/Case/info.json", "/Case/memos/2022-11-03T05-41-57.029Z.json", "/Case/memos/2022-11-03T05-41-57.029Z.html")}
    assert len(inodes) == 4


def test_unknown_paths_raise_no_such_path(store):
    tree = Tree(store)
    for path in ("/nope", "/Case/nope", "/Case/memos/nope.json", "/Case/info.json/x", "/.trash/Case", "/.by-id/nope"):
        with pytest.raises(NoSuchPath):
            tree.lookup(path)


def test_listing_a_file_raises(store):
    with pytest.raises(NotADirectory):
        Tree(store).list_dir("/Case/info.json")


def test_probe_before_listing_makes_no_fetch(store):
    tree = Tree(store)
    with pytest.raises(NoSuchPath):
        tree.lookup("/.Trash-1000")
    assert store.fetches == 0


def test_listed_project_without_records_is_malformed():
    store = HandStore([project("44444444-d", "Empty", created=1)], {"44444444-d": []})
    with pytest.raises(MalformedResponse):
        Tree(store).list_dir("/Empty/memos")


def test_project_named_like_trash_is_escaped():
    store = HandStore([project("55555555-e", ".trash", created=1)], {})
    assert names_of(Tree(store).list_dir("/")) == [".trash", ".by-id", "．trash"]
