"""A real FUSE mount of the seed dataset, driven with ls, find, cat, cp, rsync and gio."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

TRASHED = "fb3ac626-181e-4387-a9c3-c263e4e57c4e"
KO = "334c972a-5756-45f7-8eb1-f3f84bedd525"
MEMOS = "f83ce273-f078-4454-8c34-a0cecb903e4e"

SEED_FIND = [
    ".by-id",
    f".by-id/{KO}",
    f".by-id/{MEMOS}",
    f".by-id/{TRASHED}",
    ".trash",
    ".trash/project-1110201",
    ".trash/project-1110201/attachments",
    ".trash/project-1110201/groups.json",
    ".trash/project-1110201/history",
    ".trash/project-1110201/info.json",
    ".trash/project-1110201/memos",
    ".trash/project-1110201/orders",
    "KO-0005",
    "KO-0005/attachments",
    "KO-0005/attachments/file0.png",
    "KO-0005/attachments/file1.png",
    "KO-0005/groups.json",
    "KO-0005/history",
    "KO-0005/history/2022-11-24T06-54-56.105Z RAY_LINK_PROJECT_ADDMEMO.json",
    "KO-0005/history/2022-11-24T06-55-14.390Z RAY_LINK_PROJECT_ADDCOMMENT.json",
    "KO-0005/info.json",
    "KO-0005/memos",
    "KO-0005/orders",
    "KO-0005/orders/2022-11-25T02-58-41.504Z.json",
    "KO-0005/orders/2022-11-29T10-37-01.504Z.json",
    "project-1103",
    "project-1103/attachments",
    "project-1103/groups.json",
    "project-1103/history",
    "project-1103/info.json",
    "project-1103/memos",
    "project-1103/memos/2022-11-03T05-41-57.029Z.html",
    "project-1103/memos/2022-11-03T05-41-57.029Z.json",
    "project-1103/memos/2022-11-03T07-12-05.960Z.html",
    "project-1103/memos/2022-11-03T07-12-05.960Z.json",
    "project-1103/orders",
]

# The example record of the vendor's "Get project information" section.
TRASHED_INFO = {
    "_id": "fb3ac626-181e-4387-a9c3-c263e4e57c4e",
    "sk": "project",
    "region": "ap-northeast-2",
    "name": "project-1110201",
    "patientId": "patient-110202",
    "projecttype": "DENTALAVATAR",
    "count": 15,
    "size": 39449461,
    "ownerGroupId": "62d901cdcf70d0a2cf6c5d6e",
    "labId": "62dfdb179a4e3409ba649869",
    "lastUpdateGroupId": "62d901cdcf70d0a2cf6c5d6e",
    "status": {"code": "custom", "text": "Request Confirm"},
    "subject": {"name": "Tester", "birth": "1978-12-28"},
    "istrash": True,
    "isarchive": False,
    "created": 1661924655726,
    "updated": 1669373726576,
}


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def records_by_sk(emulator, project_id: str) -> dict[str, dict]:
    return {record["sk"]: record for record in emulator.api_get(f"/project/{project_id}")}


# Layout


def test_find_lists_seed_layout(seed_mount):
    result = run("find", ".", "-mindepth", "1", cwd=seed_mount.path)
    assert result.returncode == 0, result.stderr
    listed = sorted(line.removeprefix("./") for line in result.stdout.splitlines())
    assert listed == SEED_FIND


def test_ls_shows_modes_and_trash(seed_mount):
    result = run("ls", "-la", "--time-style=+%s", str(seed_mount.path / "KO-0005"))
    assert result.returncode == 0, result.stderr
    modes = {line.split()[-1]: line.split()[0] for line in result.stdout.splitlines()[1:]}
    assert modes["info.json"] == "-r--r--r--"
    assert modes["memos"] == "dr-xr-xr-x"
    assert modes["attachments"] == "drwxr-xr-x"
    assert (seed_mount.path / ".trash" / "project-1110201").is_dir()
    assert not (seed_mount.path / "project-1110201").exists()


def test_by_id_symlinks_resolve(seed_mount):
    link = seed_mount.path / ".by-id" / TRASHED
    assert os.readlink(link) == "../.trash/project-1110201"
    assert (link / "info.json").is_file()


# Content


def test_trashed_info_equals_example(seed_mount):
    text = (seed_mount.path / ".trash" / "project-1110201" / "info.json").read_text(encoding="utf-8")
    assert json.loads(text) == TRASHED_INFO
    assert list(json.loads(text)) == list(TRASHED_INFO)
    assert text.endswith("}\n")


def test_json_files_equal_records(seed_mount, emulator):
    for project_id, folder in ((KO, "KO-0005"), (MEMOS, "project-1103")):
        records = records_by_sk(emulator, project_id)
        root = seed_mount.path / folder
        groups = [record for sk, record in records.items() if sk.startswith("project:institute:")]

        assert json.loads((root / "info.json").read_text()) == records["project"]
        assert json.loads((root / "groups.json").read_text()) == groups
        for path in sorted((root / "memos").glob("*.json")) + sorted((root / "history").glob("*.json")) + sorted(
            (root / "orders").glob("*.json")
        ):
            record = json.loads(path.read_text())
            assert record == records[record["sk"]], path.name


def test_stat_size_equals_bytes_read(seed_mount):
    for path in sorted(seed_mount.path.rglob("*")):
        if path.is_file() and not path.is_symlink():
            assert path.stat().st_size == len(path.read_bytes()), path


def test_mtime_is_record_time(seed_mount):
    memo = seed_mount.path / "project-1103" / "memos" / "2022-11-03T05-41-57.029Z.json"
    attachment = seed_mount.path / "KO-0005" / "attachments" / "file1.png"
    info = seed_mount.path / ".trash" / "project-1110201" / "info.json"
    assert memo.stat().st_mtime_ns == 1667454117029 * 1_000_000
    assert attachment.stat().st_mtime_ns == 1669272932128 * 1_000_000
    assert info.stat().st_mtime_ns == 1669373726576 * 1_000_000


def test_memo_html_has_content_and_no_script(seed_mount):
    page = (seed_mount.path / "project-1103" / "memos" / "2022-11-03T05-41-57.029Z.html").read_text()
    assert "<p>Test Message</p>" in page
    assert "<p>Test Reply</p>" in page
    assert "Content-Security-Policy" in page


def test_inodes_stable_across_remount(emulator, mount_factory):
    first = mount_factory(emulator, name="first")
    inodes = {path.name: path.stat().st_ino for path in (first.path / "KO-0005" / "attachments").iterdir()}
    assert first.unmount().returncode == 0

    second = mount_factory(emulator, name="second")
    again = {path.name: path.stat().st_ino for path in (second.path / "KO-0005" / "attachments").iterdir()}
    assert again == inodes


def test_xattrs_name_record_and_type(seed_mount):
    path = seed_mount.path / "KO-0005" / "attachments" / "file0.png"
    assert os.getxattr(path, "user.mime_type") == b"image/png"
    assert os.getxattr(path, "user.rayteams.id") == KO.encode()
    assert os.getxattr(path, "user.rayteams.sk") == b"attachments:1669272938428"
    assert os.getxattr(seed_mount.path / "KO-0005" / "info.json", "user.mime_type") == b"application/json"


# Attachments


def test_cp_copies_attachments_exactly(seed_mount, emulator, tmp_path):
    destination = tmp_path / "copy"
    result = run("cp", "-r", str(seed_mount.path / "KO-0005"), str(destination))
    assert result.returncode == 0, result.stderr

    for name, sk in (("file0.png", "attachments:1669272938428"), ("file1.png", "attachments:1669272934228")):
        copied = hashlib.sha256((destination / "attachments" / name).read_bytes()).hexdigest()
        served = hashlib.sha256(emulator.download(KO, sk)).hexdigest()
        assert copied == served, name


def test_small_read_fetches_only_range(emulator, mount_factory):
    size = 64 * 1024 * 1024
    emulator.add_records(
        [{"_id": KO, "sk": "attachments:1669300000000", "filetype": "model/stl", "name": "large.stl", "size": size, "created": 1669300000000}]
    )
    mount = mount_factory(emulator)
    path = mount.path / "KO-0005" / "attachments" / "large.stl"
    offset = 50 * 1024 * 1024
    expected = emulator.download(KO, "attachments:1669300000000")[offset : offset + 4096]
    emulator.reset_stats()

    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(4096)

    assert data == expected
    assert emulator.stats()["download_bytes"] <= 512 * 1024


def test_expired_link_is_renewed(emulator, mount_factory):
    sk = "attachments:1669300000001"
    emulator.add_records(
        [{"_id": KO, "sk": sk, "filetype": "model/stl", "name": "crown.stl", "size": 4 * 1024 * 1024, "created": 1669300000001}]
    )
    expected = emulator.download(KO, sk)
    mount = mount_factory(emulator)
    path = mount.path / "KO-0005" / "attachments" / "crown.stl"
    emulator.set_faults(link_lifetime_s=1)

    with open(path, "rb") as handle:
        assert handle.read(4096) == expected[:4096]
    # Let the link that the mount has cached expire, then read a part not yet cached.
    time.sleep(1.5)
    emulator.set_faults(link_lifetime_s=1800)
    with open(path, "rb") as handle:
        handle.seek(3 * 1024 * 1024)
        assert handle.read(4096) == expected[3 * 1024 * 1024 : 3 * 1024 * 1024 + 4096]
    assert "fetching a new one" in mount.log()


# rsync


def test_second_rsync_transfers_nothing(seed_mount, emulator, tmp_path):
    destination = tmp_path / "archive"
    first = run("rsync", "-a", "--stats", f"{seed_mount.path}/", f"{destination}/")
    assert first.returncode == 0, first.stderr
    emulator.reset_stats()

    second = run("rsync", "-a", "--stats", f"{seed_mount.path}/", f"{destination}/")
    assert second.returncode == 0, second.stderr
    assert re.search(r"Number of regular files transferred: 0\b", second.stdout), second.stdout
    assert emulator.stats()["download_requests"] == 0
    assert (destination / "KO-0005" / "attachments" / "file0.png").stat().st_size == 53899


# File manager client


def test_gio_list_shows_names_sizes_types(seed_mount):
    result = run(
        "gio", "list", "-a", "standard::size,standard::content-type,time::modified", str(seed_mount.path / "KO-0005" / "attachments")
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("\t")[0]: line for line in result.stdout.splitlines()}
    assert sorted(rows) == ["file0.png", "file1.png"]
    assert rows["file0.png"].split("\t")[1] == "53899"
    assert "standard::content-type=image/png" in rows["file0.png"]
    assert "time::modified=1669272938" in rows["file0.png"]


def test_gio_info_shows_mime_xattr(seed_mount):
    result = run("gio", "info", "-a", "standard::size,xattr::*", str(seed_mount.path / "KO-0005" / "attachments" / "file1.png"))
    assert result.returncode == 0, result.stderr
    assert "standard::size: 153899" in result.stdout
    assert "xattr::mime_type: image/png" in result.stdout


def test_probes_cause_no_request(seed_mount, emulator):
    os.listdir(seed_mount.path)
    os.listdir(seed_mount.path / "KO-0005")
    emulator.reset_stats()

    for probe in (".Trash-1000", ".hidden", "autorun.inf", "KO-0005/.hidden", "KO-0005/desktop.ini"):
        with pytest.raises(FileNotFoundError):
            os.stat(seed_mount.path / probe)
    assert emulator.stats()["api_requests"] == 0


# Names


def test_odd_names_are_distinct_and_stable(emulator, mount_factory):
    korean = "김민준 상악 크라운"
    long_name = "가" * 100 + ".stl"  # 304 bytes in UTF-8
    project_id = "0dd0dd00-0000-4000-8000-000000000001"
    twin_id = "0dd0dd01-0000-4000-8000-000000000002"
    emulator.add_records(
        [
            {"_id": project_id, "sk": "project", "name": "A/B 🦷", "istrash": False, "created": 1, "updated": 1},
            {"_id": twin_id, "sk": "project", "name": "A/B 🦷", "istrash": False, "created": 2, "updated": 2},
            *[
                {"_id": project_id, "sk": f"attachments:{1000 + index}", "filetype": "image/png", "name": name, "size": 100, "created": 1000 + index}
                for index, name in enumerate([korean + ".png", "x/y.png", long_name, "dup.png", "dup.png", ".", ".."])
            ],
        ]
    )
    mount = mount_factory(emulator)
    names = sorted(os.listdir(mount.path))
    assert "A／B 🦷" in names
    assert "A／B 🦷 (0dd0dd01)" in names

    attachments = sorted(os.listdir(mount.path / "A／B 🦷" / "attachments"))
    assert korean + ".png" in attachments
    assert "x／y.png" in attachments
    assert "dup.png" in attachments
    assert "dup (1970-01-01T00-00-01.004Z).png" in attachments
    assert "．" in attachments
    assert "．．" in attachments
    long_names = [name for name in attachments if name.startswith("가")]
    assert len(long_names) == 1
    assert len(long_names[0].encode()) <= 255
    assert long_names[0].endswith(".stl")
    assert len(attachments) == 7

    # Lookups match the NFD spelling that macOS clients send.
    import unicodedata

    nfd = unicodedata.normalize("NFD", korean + ".png")
    assert os.stat(mount.path / "A／B 🦷" / "attachments" / nfd).st_size == 100


# Bad input


def test_unknown_paths_give_enoent(seed_mount):
    for path in ("nope", "KO-0005/nope", "KO-0005/attachments/nope.png", ".by-id/nope", ".trash/nope"):
        with pytest.raises(FileNotFoundError):
            os.stat(seed_mount.path / path)


def test_malformed_response_gives_eio(emulator, mount_factory):
    mount = mount_factory(emulator)
    os.listdir(mount.path)
    emulator.set_faults(queue=[{"match": f"/project/{KO}", "method": "GET", "body": "<html>not json</html>", "status": 200}])

    with pytest.raises(OSError) as caught:
        os.listdir(mount.path / "KO-0005" / "attachments")
    assert caught.value.errno == errno.EIO
    assert "MalformedResponse" in mount.log() or "not JSON" in mount.log() or "malformed" in mount.log().lower()
    assert sorted(os.listdir(mount.path / "project-1103" / "memos"))[0] == "2022-11-03T05-41-57.029Z.html"


def test_empty_project_answer_gives_eio(emulator, mount_factory):
    mount = mount_factory(emulator)
    os.listdir(mount.path)
    emulator.set_faults(queue=[{"match": f"/project/{KO}", "method": "GET", "body": '{"status": "success", "data": []}', "status": 200}])

    with pytest.raises(OSError) as caught:
        os.listdir(mount.path / "KO-0005" / "memos")
    assert caught.value.errno == errno.EIO
    assert os.path.isdir(mount.path / "project-1103")


def test_writes_are_refused(seed_mount):
    info = seed_mount.path / "KO-0005" / "info.json"
    attachment = seed_mount.path / "KO-0005" / "attachments" / "file0.png"
    with pytest.raises(PermissionError):
        open(info, "w")
    with pytest.raises(PermissionError):
        open(attachment, "r+b")
    with pytest.raises(OSError) as caught:
        os.unlink(attachment)
    assert caught.value.errno == errno.EPERM
    with pytest.raises(OSError):
        os.mkdir(seed_mount.path / "KO-0005" / "new")
