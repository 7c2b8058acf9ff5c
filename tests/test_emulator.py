"""Tests of the RAYTeams emulator, driven over loopback HTTP with requests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from rayfs.emulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TOKEN, run_in_thread

AUTH = {"Authorization": f"Bearer {DEMO_TOKEN}", "x-rayteams-client-id": DEMO_CLIENT_ID}
TIMEOUT = 60

FB = "fb3ac626-181e-4387-a9c3-c263e4e57c4e"
F8 = "f83ce273-f078-4454-8c34-a0cecb903e4e"
KO = "334c972a-5756-45f7-8eb1-f3f84bedd525"
UNKNOWN = "00000000-0000-4000-8000-000000000000"

# The example records of the vendor's Project API page, field for field.
PAGE_INFO = {
    "_id": FB,
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
PAGE_MEMOS = [
    {
        "_id": F8,
        "sk": "memo:1667454117029",
        "comments": [{"content": "<p>Test Reply</p>\n", "created": 1667454126923, "groupId": "62dfdb179a4e3409ba649869"}],
        "content": "<p>Test Message</p>\n",
        "created": 1667454117029,
        "groupId": "62dfdb179a4e3409ba649869",
    },
    {
        "_id": F8,
        "sk": "memo:1667459525960",
        "comments": [],
        "content": "<p>First Message</p>\n",
        "created": 1667459525960,
        "groupId": "62dfdb179a4e3409ba649869",
    },
]
PAGE_ATTACHMENTS = [
    {
        "_id": KO,
        "sk": "attachments:1669272938428",
        "filetype": "image/png",
        "name": "file0.png",
        "size": 53899,
        "created": 1669272938428,
    },
    {
        "_id": KO,
        "sk": "attachments:1669272934228",
        "filetype": "image/png",
        "name": "file1.png",
        "size": 153899,
        "created": 1669272932128,
    },
]
PAGE_HISTORIES = [
    {
        "_id": KO,
        "sk": "his:1669272896105",
        "data": {"content": "<p>test pos</p>\n", "type": "create"},
        "updateType": "RAY_LINK_PROJECT_ADDMEMO",
        "created": 1669272896105,
    },
    {
        "_id": KO,
        "sk": "his:1669272914390",
        "data": {"sk": "memo:1669272894365", "data": {"content": "<p>test comment</p>\n"}},
        "updateType": "RAY_LINK_PROJECT_ADDCOMMENT",
        "created": 1669272914390,
    },
]
PAGE_GROUPS = [
    {
        "_id": KO,
        "sk": "project:institute:owner",
        "group_id": "62dfdb179a4e3409ba649869",
        "name": "KO-0005",
        "patientId": "NEW-0003",
    },
    {
        "_id": KO,
        "sk": "project:institute:1669263126159",
        "group_id": "fd6ede0f-8bce-4316-a54c-38ae893964a3",
        "name": "KO-0005",
        "patientId": "NEW-0003",
    },
]
ORDER_FIELDS = [
    "_id",
    "sk",
    "ownerGroupId",
    "labId",
    "status",
    "statusName",
    "statusType",
    "product",
    "patientId",
    "subject",
    "memo",
    "medicalRecords",
    "treatments",
    "workflow",
    "created",
    "updated",
]


@pytest.fixture
def emulator():
    with run_in_thread(dataset="seed") as handle:
        yield handle


def api_get(emulator, path, headers=AUTH, **kwargs):
    return requests.get(emulator.api_url + path, headers=headers, timeout=TIMEOUT, **kwargs)


def api_data(emulator, path):
    response = api_get(emulator, path)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    return body["data"]


def admin(emulator, method, path, **kwargs):
    response = requests.request(method, emulator.root_url + "/_emulator" + path, timeout=TIMEOUT, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def set_faults(emulator, **faults):
    return admin(emulator, "PUT", "/faults", json=faults)


def download_link(emulator, project_id, sk):
    return api_data(emulator, f"/project/{project_id}/attachment/download/{sk}")["downloadLink"]


def upload(emulator, project_id, files, headers=AUTH):
    return requests.post(
        f"{emulator.api_url}/project/{project_id}/attachment/add", headers=headers, files=files, timeout=TIMEOUT
    )


def png_chunks(data):
    """Return the chunk types of a PNG file, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = []
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        kinds.append(kind)
        position += 12 + length
    assert position == len(data)
    return kinds


# Seed records


def test_seed_info_matches_page(emulator):
    info = api_data(emulator, f"/project/{FB}/info")

    assert info == PAGE_INFO
    assert list(info) == list(PAGE_INFO)
    assert list(info["subject"]) == ["name", "birth"]


def test_seed_memos_match_page(emulator):
    memos = api_data(emulator, f"/project/{F8}/memo")

    assert memos == PAGE_MEMOS
    assert [list(memo) for memo in memos] == [list(memo) for memo in PAGE_MEMOS]


def test_seed_attachments_match_page(emulator):
    attachments = api_data(emulator, f"/project/{KO}/attachments")

    assert attachments == PAGE_ATTACHMENTS
    assert [list(record) for record in attachments] == [list(record) for record in PAGE_ATTACHMENTS]


def test_seed_histories_match_page(emulator):
    assert api_data(emulator, f"/project/{KO}/histories") == PAGE_HISTORIES


def test_seed_groups_match_page(emulator):
    assert api_data(emulator, f"/project/{KO}/groups") == PAGE_GROUPS


def test_seed_orders_have_order_fields(emulator):
    orders = api_data(emulator, f"/project/{KO}/orders")

    assert [order["sk"] for order in orders] == ["order:1669345121504", "order:1669718221504"]
    for order in orders:
        assert list(order) == ORDER_FIELDS
        assert order["_id"] == KO
        assert order["statusType"] in ("NEW", "INPROGRESS", "CLOSED")
        assert list(order["product"]) == ["currency", "discount", "price", "productname"]


def test_project_list_returns_info_records(emulator):
    projects = api_data(emulator, "/project")

    assert [project["_id"] for project in projects] == [FB, F8, KO]
    assert [project["sk"] for project in projects] == ["project", "project", "project"]
    assert projects[0] == PAGE_INFO
    assert [project["istrash"] for project in projects] == [True, False, False]


def test_made_up_info_follows_groups(emulator):
    info = api_data(emulator, f"/project/{KO}/info")

    assert list(info) == list(PAGE_INFO)
    assert info["name"] == "KO-0005"
    assert info["patientId"] == "NEW-0003"
    assert info["istrash"] is False
    assert info["count"] == 2
    assert info["size"] == 53899 + 153899


def test_project_returns_records_in_order(emulator):
    records = api_data(emulator, f"/project/{KO}")

    assert [record["sk"] for record in records] == [
        "project",
        "attachments:1669272938428",
        "attachments:1669272934228",
        "his:1669272896105",
        "his:1669272914390",
        "order:1669345121504",
        "order:1669718221504",
        "project:institute:owner",
        "project:institute:1669263126159",
    ]
    assert records[1:3] == PAGE_ATTACHMENTS


def test_owner_groups_exist_for_all(emulator):
    for project_id, group_id in ((FB, "62d901cdcf70d0a2cf6c5d6e"), (F8, "62dfdb179a4e3409ba649869")):
        groups = api_data(emulator, f"/project/{project_id}/groups")
        assert [group["sk"] for group in groups] == ["project:institute:owner"]
        assert groups[0]["group_id"] == group_id


def test_seed_pngs_valid_documented_sizes(emulator):
    for record in PAGE_ATTACHMENTS:
        data = requests.get(download_link(emulator, KO, record["sk"]), timeout=TIMEOUT).content
        kinds = png_chunks(data)
        assert len(data) == record["size"]
        assert kinds[0] == b"IHDR"
        assert kinds[-1] == b"IEND"
        assert b"IDAT" in kinds


# Authentication


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "wrong-token"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": ""},
        {"token": "wrong-token"},
        {"Authorization": DEMO_TOKEN, "x-rayteams-client-id": "other-client"},
    ],
    ids=["none", "wrong", "wrong-bearer", "empty", "wrong-token-header", "wrong-client-id"],
)
def test_invalid_credentials_get_401(emulator, headers):
    response = api_get(emulator, "/project", headers=headers)

    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": DEMO_TOKEN},
        {"Authorization": f"Bearer {DEMO_TOKEN}"},
        {"Authorization": f"bearer {DEMO_TOKEN}"},
        {"token": DEMO_TOKEN},
        {"Authorization": DEMO_TOKEN, "x-rayteams-client-id": DEMO_CLIENT_ID},
    ],
    ids=["bare", "bearer", "bearer-lowercase", "token-header", "with-client-id"],
)
def test_valid_credentials_are_accepted(emulator, headers):
    response = api_get(emulator, "/project", headers=headers)

    assert response.status_code == 200
    assert response.json()["status"] == "success"


def test_upload_requires_credentials(emulator):
    response = upload(emulator, KO, {"file": ("a.txt", b"abc")}, headers={})

    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}


# Quirks of the real API


def test_unknown_project_info_is_empty(emulator):
    response = api_get(emulator, f"/project/{UNKNOWN}/info")

    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": {}}


@pytest.mark.parametrize("suffix", ["", "/memo", "/attachments", "/histories", "/orders", "/groups"])
def test_unknown_project_lists_are_empty(emulator, suffix):
    response = api_get(emulator, f"/project/{UNKNOWN}{suffix}")

    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": []}


def test_download_unknown_sk_no_item(emulator):
    for project_id, sk in ((KO, "attachments:1"), (UNKNOWN, "attachments:1669272938428"), (KO, "his:1669272896105")):
        response = api_get(emulator, f"/project/{project_id}/attachment/download/{sk}")
        assert response.status_code == 200
        assert response.json() == {"errorCode": "NO_ITEM"}


def test_upload_unknown_project_fails(emulator):
    response = upload(emulator, UNKNOWN, {"file": ("a.txt", b"abc")})

    assert response.status_code == 200
    assert response.json() == {"status": "fail", "error": "project not found"}


def test_upload_without_file_field_fails(emulator):
    response = upload(emulator, KO, {"other": ("a.txt", b"abc")})

    assert response.status_code == 200
    assert response.json() == {"status": "fail", "data": {"code": "E001"}}


def test_unknown_route_is_404(emulator):
    for url in (emulator.api_url + "/nothing", emulator.root_url + "/nothing", emulator.api_url + f"/project/{KO}/nothing"):
        response = requests.get(url, headers=AUTH, timeout=TIMEOUT)
        assert response.status_code == 404
        assert response.json() == {"message": "Not Found"}


# Download links and Range


def test_download_link_record_fields(emulator):
    data = api_data(emulator, f"/project/{KO}/attachment/download/attachments:1669272938428")

    assert list(data) == [*PAGE_ATTACHMENTS[0], "downloadLink"]
    assert {key: value for key, value in data.items() if key != "downloadLink"} == PAGE_ATTACHMENTS[0]
    assert data["downloadLink"].startswith(emulator.root_url + "/_files/")


def test_download_needs_no_credentials(emulator):
    link = download_link(emulator, KO, "attachments:1669272938428")
    response = requests.get(link, timeout=TIMEOUT)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert int(response.headers["Content-Length"]) == 53899
    assert len(response.content) == 53899


@pytest.mark.parametrize(
    "range_header, start, stop",
    [
        ("bytes=0-0", 0, 1),
        ("bytes=10-19", 10, 20),
        ("bytes=50000-", 50000, 53899),
        ("bytes=-100", 53799, 53899),
        ("bytes=53000-99999999", 53000, 53899),
        ("bytes=-99999999", 0, 53899),
    ],
)
def test_range_read_returns_slice(emulator, range_header, start, stop):
    link = download_link(emulator, KO, "attachments:1669272938428")
    full = requests.get(link, timeout=TIMEOUT).content

    response = requests.get(link, headers={"Range": range_header}, timeout=TIMEOUT)

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/53899"
    assert int(response.headers["Content-Length"]) == stop - start
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.content == full[start:stop]


@pytest.mark.parametrize("range_header", ["bytes=53899-", "bytes=60000-60010", "bytes=-0"])
def test_unsatisfiable_range_is_416(emulator, range_header):
    link = download_link(emulator, KO, "attachments:1669272938428")
    response = requests.get(link, headers={"Range": range_header}, timeout=TIMEOUT)

    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */53899"


@pytest.mark.parametrize("range_header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3"])
def test_unsupported_range_sends_whole_file(emulator, range_header):
    link = download_link(emulator, KO, "attachments:1669272938428")
    response = requests.get(link, headers={"Range": range_header}, timeout=TIMEOUT)

    assert response.status_code == 200
    assert len(response.content) == 53899


def test_head_reports_exact_length(emulator):
    link = download_link(emulator, KO, "attachments:1669272934228")
    response = requests.head(link, timeout=TIMEOUT)

    assert response.status_code == 200
    assert response.headers["Content-Length"] == "153899"
    assert response.content == b""


def test_expired_link_is_refused(emulator):
    set_faults(emulator, link_lifetime_s=1)
    link = download_link(emulator, KO, "attachments:1669272938428")

    time.sleep(1.5)
    response = requests.get(link, timeout=TIMEOUT)

    assert response.status_code == 403
    assert response.json() == {"message": "Request has expired"}


def test_unknown_link_is_refused(emulator):
    response = requests.get(emulator.root_url + "/_files/not-a-real-token", timeout=TIMEOUT)

    assert response.status_code == 403
    assert response.json() == {"message": "Request has expired"}


def test_each_link_request_gets_new_link(emulator):
    first = download_link(emulator, KO, "attachments:1669272938428")
    second = download_link(emulator, KO, "attachments:1669272938428")

    assert first != second
    assert requests.get(first, timeout=TIMEOUT).content == requests.get(second, timeout=TIMEOUT).content


# Uploads


def test_upload_streams_large_file(emulator):
    content = os.urandom(20 * 1024 * 1024)

    response = upload(emulator, KO, {"file": ("scan 김민준.stl", content, "application/octet-stream")})

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    record = body["data"]
    assert list(record) == ["_id", "sk", "filetype", "name", "size", "created"]
    assert record["_id"] == KO
    assert record["sk"] == f"attachments:{record['created']}"
    assert record["filetype"] == "model/stl"
    assert record["name"] == "scan 김민준.stl"
    assert record["size"] == len(content)

    downloaded = requests.get(download_link(emulator, KO, record["sk"]), timeout=TIMEOUT).content
    assert hashlib.sha256(downloaded).hexdigest() == hashlib.sha256(content).hexdigest()
    assert api_data(emulator, f"/project/{KO}/attachments")[-1] == record


@pytest.mark.parametrize(
    "filename, content_type, expected",
    [
        ("photo.png", "image/jpeg", "image/jpeg"),
        ("photo.png", "application/octet-stream", "image/png"),
        ("volume.dcm", None, "application/dicom"),
        ("report.pdf", None, "application/pdf"),
        ("no-extension", None, "application/octet-stream"),
    ],
)
def test_upload_filetype_from_part_or_name(emulator, filename, content_type, expected):
    part = (filename, b"content") if content_type is None else (filename, b"content", content_type)

    record = upload(emulator, KO, {"file": part}).json()["data"]

    assert record["filetype"] == expected


def test_upload_never_replaces_attachment(emulator):
    now = int(time.time() * 1000)
    occupied = [
        {"_id": KO, "sk": f"attachments:{stamp}", "filetype": "text/plain", "name": "occupied.txt", "size": 1, "created": stamp}
        for stamp in range(now, now + 2000)
    ]
    admin(emulator, "POST", "/records", json={"records": occupied})

    record = upload(emulator, KO, {"file": ("new.txt", b"new")}).json()["data"]

    occupied_sks = {entry["sk"] for entry in occupied}
    assert record["sk"] not in occupied_sks
    assert len(api_data(emulator, f"/project/{KO}/attachments")) == 2 + len(occupied) + 1


def test_upload_over_limit_is_413(emulator):
    set_faults(emulator, max_upload_bytes=1000)

    response = upload(emulator, KO, {"file": ("big.bin", b"x" * 5000)})

    assert response.status_code == 413
    assert response.json() == {"message": "Payload Too Large"}
    assert len(api_data(emulator, f"/project/{KO}/attachments")) == 2


def test_upload_counted_in_stats(emulator):
    admin(emulator, "POST", "/stats/reset")

    upload(emulator, KO, {"file": ("a.txt", b"abc")})

    stats = admin(emulator, "GET", "/stats")
    assert stats["uploads"] == 1
    assert stats["by_route"] == {"POST /project/{_id}/attachment/add": 1}


# Faults


def test_queued_500_applies_once(emulator):
    set_faults(emulator, queue=[{"match": f"/project/{KO}/info", "status": 500}])

    first = api_get(emulator, f"/project/{KO}/info")
    second = api_get(emulator, f"/project/{KO}/info")

    assert first.status_code == 500
    assert first.json() == {"message": "Internal Server Error"}
    assert second.status_code == 200
    assert admin(emulator, "GET", "/faults")["queue"] == []


def test_queued_429_sends_retry_after(emulator):
    set_faults(emulator, queue=[{"match": "/project", "status": 429, "retry_after": 3}])

    response = api_get(emulator, "/project")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json() == {"message": "Too Many Requests"}


def test_global_retry_after_on_429(emulator):
    set_faults(emulator, retry_after=7, queue=[{"match": "/project", "status": 429}])

    response = api_get(emulator, "/project")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_queued_drop_closes_connection(emulator):
    set_faults(emulator, queue=[{"match": "/project", "drop": True}])

    with pytest.raises(requests.ConnectionError):
        api_get(emulator, "/project")
    assert api_get(emulator, "/project").status_code == 200


def test_queued_raw_body_sent_as_is(emulator):
    set_faults(emulator, queue=[{"match": "/project", "body": "<html>not json"}])

    response = api_get(emulator, "/project")

    assert response.status_code == 200
    assert response.text == "<html>not json"


def test_queue_matches_method_and_path(emulator):
    set_faults(
        emulator,
        queue=[
            {"match": "/attachment/add", "status": 503},
            {"match": "/project", "method": "POST", "status": 502},
            {"match": f"/project/{F8}", "status": 504},
        ],
    )

    assert api_get(emulator, f"/project/{KO}").status_code == 200
    assert api_get(emulator, f"/project/{F8}/memo").status_code == 504
    assert upload(emulator, KO, {"file": ("a.txt", b"abc")}).status_code == 503
    assert upload(emulator, KO, {"file": ("a.txt", b"abc")}).status_code == 502
    assert upload(emulator, KO, {"file": ("a.txt", b"abc")}).status_code == 200


def test_queued_fault_hits_download(emulator):
    link = download_link(emulator, KO, "attachments:1669272938428")
    set_faults(emulator, queue=[{"match": "/_files/", "status": 503}])

    assert requests.get(link, timeout=TIMEOUT).status_code == 503
    assert requests.get(link, timeout=TIMEOUT).status_code == 200


def test_error_rate_one_fails_all(emulator):
    set_faults(emulator, error_rate=1.0, error_status=503)

    responses = [api_get(emulator, "/project") for _ in range(5)]

    assert [response.status_code for response in responses] == [503] * 5
    assert requests.get(emulator.root_url + "/_emulator/faults", timeout=TIMEOUT).status_code == 200


def test_error_rate_is_repeatable(emulator):
    outcomes = []
    for _ in range(2):
        admin(emulator, "DELETE", "/faults")
        set_faults(emulator, error_rate=0.5)
        outcomes.append([api_get(emulator, "/project").status_code for _ in range(20)])

    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500}


def test_drop_rate_one_drops_all(emulator):
    set_faults(emulator, drop_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        api_get(emulator, "/project")
    assert admin(emulator, "GET", "/faults")["drop_rate"] == 1.0


def test_latency_keeps_responses_intact(emulator):
    set_faults(emulator, latency_ms=20)

    assert api_data(emulator, f"/project/{FB}/info") == PAGE_INFO


def test_faults_reset_restores_defaults(emulator):
    set_faults(emulator, error_rate=1.0, latency_ms=5, queue=[{"match": "/x"}])

    state = admin(emulator, "DELETE", "/faults")

    assert state == {
        "latency_ms": 0,
        "error_rate": 0.0,
        "error_status": 500,
        "retry_after": None,
        "link_lifetime_s": 1800,
        "drop_rate": 0.0,
        "max_upload_bytes": None,
        "token_lifetime_s": 3600,
        "queue": [],
        "seed": 0,
    }
    assert api_get(emulator, "/project").status_code == 200


@pytest.mark.parametrize(
    "faults",
    [
        {"no_such_key": 1},
        {"error_rate": 2},
        {"error_status": 99},
        {"latency_ms": "slow"},
        {"queue": [{"status": 500}]},
        {"queue": [{"match": "/x", "colour": "red"}]},
    ],
)
def test_invalid_faults_are_rejected(emulator, faults):
    response = requests.put(emulator.root_url + "/_emulator/faults", json=faults, timeout=TIMEOUT)

    assert response.status_code == 400
    assert "message" in response.json()
    assert admin(emulator, "GET", "/faults")["error_rate"] == 0.0


# Stats


def test_stats_count_download_bytes(emulator):
    link = download_link(emulator, KO, "attachments:1669272934228")
    admin(emulator, "POST", "/stats/reset")

    requests.get(link, timeout=TIMEOUT)
    requests.get(link, headers={"Range": "bytes=100-199"}, timeout=TIMEOUT)
    requests.head(link, timeout=TIMEOUT)
    api_get(emulator, f"/project/{KO}")
    api_get(emulator, f"/project/{F8}")
    api_get(emulator, "/project")

    stats = admin(emulator, "GET", "/stats")
    assert stats["download_requests"] == 3
    assert stats["download_bytes"] == 153899 + 100
    assert stats["api_requests"] == 3
    assert stats["by_route"] == {"GET /project": 1, "GET /project/{_id}": 2}
    assert stats["uploads"] == 0


def test_stats_reset_zeroes_counters(emulator):
    api_get(emulator, "/project")

    assert admin(emulator, "POST", "/stats/reset") == {
        "api_requests": 0,
        "by_route": {},
        "download_requests": 0,
        "download_bytes": 0,
        "uploads": 0,
    }


# Admin records


ODD_ID = "odd-0000-4000-8000-000000000001"
ODD_NAMES = [
    "upper/lower: 김민준",
    "..",
    "tab\tand\x01control",
    "x" * 300 + ".stl",
    "Ｆｕｌｌ　ｗｉｄｔｈ",
    "e\u0301 decomposed",
]


def test_admin_records_keep_odd_names(emulator):
    content = "정확한 내용\n".encode("utf-8")
    records = [
        {"_id": ODD_ID, "sk": "project", "name": ODD_NAMES[0], "istrash": False, "created": 1700000000000},
        {"_id": ODD_ID, "sk": "attachments:1700000000001", "filetype": "text/plain", "name": ODD_NAMES[1],
         "size": len(content), "created": 1700000000001, "_content_base64": base64.b64encode(content).decode()},
    ] + [
        {"_id": ODD_ID, "sk": f"attachments:{1700000000002 + index}", "filetype": "application/octet-stream",
         "name": name, "size": 10 + index, "created": 1700000000002 + index}
        for index, name in enumerate(ODD_NAMES[2:])
    ]

    assert admin(emulator, "POST", "/records", json={"records": records}) == {"status": "success", "data": len(records)}

    stored = api_data(emulator, f"/project/{ODD_ID}")
    assert [record["name"] for record in stored] == ODD_NAMES
    assert all("_content_base64" not in record for record in stored)
    assert api_data(emulator, "/project")[-1]["name"] == ODD_NAMES[0]
    assert requests.get(download_link(emulator, ODD_ID, "attachments:1700000000001"), timeout=TIMEOUT).content == content
    generated = requests.get(download_link(emulator, ODD_ID, "attachments:1700000000003"), timeout=TIMEOUT).content
    assert len(generated) == 11


def test_admin_replace_keeps_order(emulator):
    replacement = dict(PAGE_MEMOS[0], content="<p>Changed</p>\n")

    admin(emulator, "POST", "/records", json={"records": [replacement]})

    memos = api_data(emulator, f"/project/{F8}/memo")
    assert memos == [replacement, PAGE_MEMOS[1]]


def test_admin_rejects_record_without_sk(emulator):
    response = requests.post(
        emulator.root_url + "/_emulator/records", json={"records": [{"_id": KO}]}, timeout=TIMEOUT
    )

    assert response.status_code == 400
    assert len(api_data(emulator, f"/project/{KO}")) == 9


def test_generated_files_are_valid(emulator):
    sizes = {"image/png": 70_001, "model/stl": 84 + 50 * 1234, "application/dicom": 300_000, "application/pdf": 9_999}
    records = [
        {"_id": KO, "sk": f"attachments:{1800000000000 + index}", "filetype": filetype, "name": f"file{index}",
         "size": size, "created": 1800000000000 + index}
        for index, (filetype, size) in enumerate(sizes.items())
    ]
    admin(emulator, "POST", "/records", json={"records": records})

    files = {
        record["filetype"]: requests.get(download_link(emulator, KO, record["sk"]), timeout=TIMEOUT).content
        for record in records
    }

    for filetype, size in sizes.items():
        assert len(files[filetype]) == size
    kinds = png_chunks(files["image/png"])
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    stl = files["model/stl"]
    assert not stl.startswith(b"solid")
    assert struct.unpack("<I", stl[80:84])[0] == 1234
    assert len(stl) == 84 + 50 * 1234
    assert files["application/dicom"][128:132] == b"DICM"
    assert files["application/pdf"].startswith(b"%PDF-")
    assert files["application/pdf"].rstrip(b"\n").endswith(b"%%EOF")


# OAuth


def authorize(emulator, **params):
    query = {"client_id": DEMO_CLIENT_ID, "response_type": "code", "redirect_uri": "http://127.0.0.1:8765/callback"}
    query.update(params)
    return requests.get(emulator.root_url + "/oauth2/authorize", params=query, allow_redirects=False, timeout=TIMEOUT)


def code_from(response):
    return parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]


def token_request(emulator, form, auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)):
    return requests.post(emulator.root_url + "/oauth2/token", data=form, auth=auth, timeout=TIMEOUT)


def test_authorize_redirects_with_code(emulator):
    response = authorize(emulator, state="xyz 1")

    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("http", "127.0.0.1:8765", "/callback")
    query = parse_qs(location.query)
    assert query["state"] == ["xyz 1"]
    assert len(query["code"][0]) >= 20


def test_login_path_also_authorizes(emulator):
    response = requests.get(
        emulator.root_url + "/login",
        params={"client_id": DEMO_CLIENT_ID, "response_type": "code", "redirect_uri": "http://localhost:9/cb"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )

    assert response.status_code == 302
    assert response.headers["Location"].startswith("http://localhost:9/cb?code=")


def test_code_flow_issues_working_tokens(emulator):
    code = code_from(authorize(emulator))

    response = token_request(
        emulator, {"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:8765/callback"}
    )

    assert response.status_code == 200
    tokens = response.json()
    assert sorted(tokens) == ["access_token", "expires_in", "id_token", "refresh_token", "token_type"]
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["id_token"].count(".") == 2
    assert api_get(emulator, "/project", headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 200
    assert api_get(emulator, "/project", headers={"Authorization": tokens["access_token"]}).status_code == 200


def test_code_is_single_use(emulator):
    code = code_from(authorize(emulator))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:8765/callback"}

    assert token_request(emulator, form).status_code == 200
    second = token_request(emulator, form)

    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"


def test_refresh_flow_issues_new_token(emulator):
    code = code_from(authorize(emulator))
    first = token_request(
        emulator, {"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:8765/callback"}
    ).json()

    form = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }
    response = token_request(emulator, form, auth=None)

    assert response.status_code == 200
    refreshed = response.json()
    assert refreshed["access_token"] != first["access_token"]
    assert refreshed["refresh_token"] == first["refresh_token"]
    assert api_get(emulator, "/project", headers={"Authorization": refreshed["access_token"]}).status_code == 200


def test_pkce_verifier_is_checked(emulator):
    verifier = "verifier-" + "a" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://127.0.0.1:8765/callback"

    wrong_code = code_from(authorize(emulator, code_challenge=challenge, code_challenge_method="S256"))
    wrong = token_request(
        emulator, {"grant_type": "authorization_code", "code": wrong_code, "redirect_uri": redirect, "code_verifier": "nope"}
    )
    right_code = code_from(authorize(emulator, code_challenge=challenge, code_challenge_method="S256"))
    right = token_request(
        emulator, {"grant_type": "authorization_code", "code": right_code, "redirect_uri": redirect, "code_verifier": verifier}
    )

    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert right.status_code == 200


@pytest.mark.parametrize(
    "form, auth, error",
    [
        ({"grant_type": "refresh_token", "refresh_token": "x"}, (DEMO_CLIENT_ID, "wrong"), "invalid_client"),
        ({"grant_type": "refresh_token", "refresh_token": "x"}, None, "invalid_client"),
        ({"grant_type": "refresh_token", "refresh_token": "x"}, (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), "invalid_grant"),
        ({"grant_type": "refresh_token"}, (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), "invalid_request"),
        ({"grant_type": "password"}, (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), "unsupported_grant_type"),
        ({}, (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), "invalid_request"),
        ({"grant_type": "authorization_code", "code": "made-up"}, (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), "invalid_grant"),
    ],
    ids=["wrong-secret", "no-client", "unknown-refresh", "no-refresh", "password-grant", "no-grant", "unknown-code"],
)
def test_token_errors_are_400(emulator, form, auth, error):
    response = token_request(emulator, form, auth=auth)

    assert response.status_code == 400
    assert response.json()["error"] == error


def test_authorize_rejects_remote_redirect(emulator):
    response = authorize(emulator, redirect_uri="http://example.com/callback")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_issued_token_expires(emulator):
    set_faults(emulator, token_lifetime_s=1)
    code = code_from(authorize(emulator))
    tokens = token_request(
        emulator, {"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:8765/callback"}
    ).json()

    time.sleep(1.5)
    response = api_get(emulator, "/project", headers={"Authorization": tokens["access_token"]})

    assert tokens["expires_in"] == 1
    assert response.status_code == 401


# Data directory, datasets and the foreground server


def test_data_dir_is_reused(tmp_path):
    with run_in_thread(data_dir=str(tmp_path), dataset="seed") as first:
        record = upload(first, KO, {"file": ("kept.txt", b"kept")}).json()["data"]

    with run_in_thread(data_dir=str(tmp_path), dataset="demo") as second:
        projects = api_data(second, "/project")
        attachments = api_data(second, f"/project/{KO}/attachments")
        kept_bytes = requests.get(download_link(second, KO, record["sk"]), timeout=TIMEOUT).content

    assert [project["_id"] for project in projects] == [FB, F8, KO]
    assert attachments[-1] == record
    assert kept_bytes == b"kept"
    assert (tmp_path / "emulator.sqlite3").is_file()


def test_temporary_data_dir_removed(emulator):
    data_dir = emulator.data_dir

    emulator.stop()

    assert not os.path.exists(data_dir)


def test_empty_dataset_has_no_projects():
    with run_in_thread(dataset="empty") as handle:
        assert api_data(handle, "/project") == []


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError):
        run_in_thread(dataset="nonexistent")


def demo_snapshot():
    """Return the demo records and the SHA-256 of every attachment below 4 MiB."""
    with run_in_thread(dataset="demo") as handle:
        projects = api_data(handle, "/project")
        records = [record for project in projects for record in api_data(handle, f"/project/{project['_id']}")]
        hashes = {}
        for record in records:
            if record["sk"].startswith("attachments:") and record["size"] < 4 * 1024 * 1024:
                data = requests.get(download_link(handle, record["_id"], record["sk"]), timeout=TIMEOUT).content
                assert len(data) == record["size"]
                hashes[(record["_id"], record["sk"])] = hashlib.sha256(data).hexdigest()
    return records, hashes


def test_demo_dataset_is_deterministic():
    first_records, first_hashes = demo_snapshot()
    second_records, second_hashes = demo_snapshot()

    assert json.dumps(first_records, ensure_ascii=False) == json.dumps(second_records, ensure_ascii=False)
    assert first_hashes == second_hashes
    assert len(first_hashes) >= 30


def test_demo_dataset_contents():
    with run_in_thread(dataset="demo") as handle:
        projects = api_data(handle, "/project")
        names = [project["name"] for project in projects]
        attachments = [
            record for project in projects for record in api_data(handle, f"/project/{project['_id']}/attachments")
        ]
        histories = [
            record for project in projects for record in api_data(handle, f"/project/{project['_id']}/histories")
        ]
        large = [record for record in attachments if record["size"] >= 64 * 1024 * 1024]
        tail = requests.get(
            download_link(handle, large[0]["_id"], large[0]["sk"]), headers={"Range": "bytes=-1048576"}, timeout=TIMEOUT
        )

    assert names[:3] == ["project-1110201", "project-1103", "KO-0005"]
    assert "김민준 상악 크라운" in names
    assert "Müller Brücke 36-37" in names
    assert 10 <= len(projects) - 3 <= 12
    assert [project["istrash"] for project in projects[3:]].count(True) == 1
    assert {record["filetype"] for record in attachments} >= {"image/png", "model/stl", "application/dicom", "application/pdf"}
    assert 2 <= len(large) <= 3
    assert all(record["size"] <= 512 * 1024 * 1024 for record in large)
    assert {"RAY_LINK_PROJECT_ADDMEMO", "RAY_LINK_PROJECT_ADDCOMMENT"} <= {record["updateType"] for record in histories}
    assert len({record["updateType"] for record in histories}) >= 4
    assert tail.status_code == 206
    assert len(tail.content) == 1048576
    assert tail.content[:4096] != tail.content[4096:8192]


def test_serve_prints_url_line(tmp_path):
    code = f"from rayfs.emulator import serve; serve(port=0, dataset='seed', data_dir={str(tmp_path)!r})"
    prefix = "rayfs emulator: serving dataset seed at http://127.0.0.1:"
    suffix = f"/v1.0 (token {DEMO_TOKEN}, client id {DEMO_CLIENT_ID})"

    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline().strip()
            assert line.startswith(prefix)
            assert line.endswith(suffix)
            port = int(line[len(prefix) : -len(suffix)])
            response = requests.get(f"http://127.0.0.1:{port}/v1.0/project", headers=AUTH, timeout=TIMEOUT)
            assert response.status_code == 200
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=TIMEOUT)

    assert returncode == 0
