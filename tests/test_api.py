"""Tests of rayfs.api against the emulator, served on a loopback port picked by the OS."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from rayfs.api import REGIONS, ApiClient, DownloadLink, base_url_for_region
from rayfs.api.responses import parse_retry_after
from rayfs.emulator import run_in_thread
from rayfs.errors import (
    ApplicationError,
    AuthError,
    ConfigError,
    HTTPStatusError,
    LinkExpired,
    MalformedResponse,
    NotFoundError,
    RateLimited,
    ServerError,
)

TOKEN = "demo-token"
CLIENT_ID = "rayfs-demo"

TRASHED_PROJECT = "fb3ac626-181e-4387-a9c3-c263e4e57c4e"
ATTACHMENT_PROJECT = "334c972a-5756-45f7-8eb1-f3f84bedd525"
MEMO_PROJECT = "f83ce273-f078-4454-8c34-a0cecb903e4e"
SEED_PROJECTS = {TRASHED_PROJECT, ATTACHMENT_PROJECT, MEMO_PROJECT}

FILE0_SK = "attachments:1669272938428"
FILE0_SIZE = 53899
FILE1_SK = "attachments:1669272934228"
FILE1_SIZE = 153899

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("emulator")
    with run_in_thread(data_dir=str(data_dir), dataset="seed") as handle:
        yield handle


@pytest.fixture(autouse=True)
def reset_faults(emulator):
    requests.delete(f"{emulator.root_url}/_emulator/faults", timeout=5).raise_for_status()
    yield
    requests.delete(f"{emulator.root_url}/_emulator/faults", timeout=5).raise_for_status()


@pytest.fixture
def client(emulator):
    api = ApiClient(emulator.api_url, TOKEN, CLIENT_ID, backoff_base=0.001, backoff_max=0.01)
    api.retry_policy.sleep = lambda seconds: None
    yield api
    api.close()


def set_faults(emulator, **faults):
    requests.put(f"{emulator.root_url}/_emulator/faults", json=faults, timeout=5).raise_for_status()


def stats(emulator) -> dict:
    response = requests.get(f"{emulator.root_url}/_emulator/stats", timeout=5)
    response.raise_for_status()
    return response.json()


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def download_all(client: ApiClient, link: DownloadLink) -> bytes:
    with client.open_range(link, 0) as stream:
        return b"".join(stream)


# -- regions ---------------------------------------------------------------


def test_region_builds_project_url():
    assert base_url_for_region("ap-northeast-2") == "https://api-ap-northeast-2-project.rayteams.com/v1.0"


def test_thirteen_regions_known():
    assert len(REGIONS) == 13


def test_unknown_region_raises_config_error():
    with pytest.raises(ConfigError) as caught:
        base_url_for_region("mars-north-1")

    assert "'mars-north-1'" in str(caught.value)
    assert "eu-north-1" in str(caught.value)


def test_retry_after_http_date_parsed():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_retry_after_seconds_parsed():
    assert parse_retry_after("3") == 3.0


def test_retry_after_garbage_ignored():
    assert parse_retry_after("soon") is None


# -- reading projects --------------------------------------------------------


def test_list_projects_returns_seed_ids(client):
    projects = client.list_projects()

    assert {project.id for project in projects} == SEED_PROJECTS


def test_list_projects_reads_istrash(client):
    trashed = {project.id for project in client.list_projects() if project.istrash}

    assert trashed == {TRASHED_PROJECT}


def test_get_project_splits_by_sk(client):
    records = client.get_project(ATTACHMENT_PROJECT)

    assert records.info is not None
    assert records.info.sk == "project"
    assert [attachment.sk for attachment in records.attachments] == [FILE0_SK, FILE1_SK]
    assert len(records.histories) == 2
    assert len(records.orders) == 2
    assert len(records.groups) == 2
    assert records.memos == []
    assert records.unknown == []


def test_get_project_memos_counted(client):
    records = client.get_project(MEMO_PROJECT)

    assert [memo.sk for memo in records.memos] == ["memo:1667454117029", "memo:1667459525960"]


def test_get_project_unknown_id_not_found(client):
    with pytest.raises(NotFoundError):
        client.get_project("00000000-0000-0000-0000-000000000000")


def test_get_info_returns_project(client):
    info = client.get_info(TRASHED_PROJECT)

    assert info.name == "project-1110201"
    assert info.istrash is True


def test_get_info_unknown_id_not_found(client):
    with pytest.raises(NotFoundError):
        client.get_info("00000000-0000-0000-0000-000000000000")


def test_get_attachments_lists_files(client):
    attachments = client.get_attachments(ATTACHMENT_PROJECT)

    assert [(item.name, item.size) for item in attachments] == [("file0.png", FILE0_SIZE), ("file1.png", FILE1_SIZE)]


def test_get_memos_lists_comments(client):
    memos = client.get_memos(MEMO_PROJECT)

    assert [len(memo.comments) for memo in memos] == [1, 0]


def test_list_endpoints_match_get_project(client):
    records = client.get_project(ATTACHMENT_PROJECT)

    assert [item.raw for item in client.get_histories(ATTACHMENT_PROJECT)] == [item.raw for item in records.histories]
    assert [item.raw for item in client.get_orders(ATTACHMENT_PROJECT)] == [item.raw for item in records.orders]
    assert [item.raw for item in client.get_groups(ATTACHMENT_PROJECT)] == [item.raw for item in records.groups]


# -- credentials -------------------------------------------------------------


def test_bad_token_raises_auth_error(emulator):
    with ApiClient(emulator.api_url, "wrong-token", CLIENT_ID) as api:
        with pytest.raises(AuthError) as caught:
            api.list_projects()

    assert caught.value.status == 401


def test_token_refresher_called_once(emulator):
    calls = []

    def refresh() -> str:
        calls.append(1)
        return TOKEN

    with ApiClient(emulator.api_url, "expired-token", CLIENT_ID, token_refresher=refresh) as api:
        first = api.list_projects()
        second = api.list_projects()

    assert len(calls) == 1
    assert {project.id for project in first} == SEED_PROJECTS
    assert {project.id for project in second} == SEED_PROJECTS


def test_refresher_with_bad_token_raises(emulator):
    calls = []

    def refresh() -> str:
        calls.append(1)
        return "still-wrong"

    with ApiClient(emulator.api_url, "expired-token", CLIENT_ID, token_refresher=refresh) as api:
        with pytest.raises(AuthError):
            api.list_projects()

    assert len(calls) == 1


@pytest.mark.parametrize("auth_scheme", ["Bearer", "", "token"])
def test_each_auth_scheme_accepted(emulator, auth_scheme):
    with ApiClient(emulator.api_url, TOKEN, CLIENT_ID, auth_scheme=auth_scheme) as api:
        projects = api.list_projects()

    assert {project.id for project in projects} == SEED_PROJECTS


def test_wrong_client_id_raises_auth_error(emulator):
    with ApiClient(emulator.api_url, TOKEN, "someone-else") as api:
        with pytest.raises(AuthError):
            api.list_projects()


def test_concurrent_401s_refresh_once(emulator):
    calls = []
    start = threading.Barrier(16)

    def refresh() -> str:
        calls.append(1)
        return TOKEN

    def fetch_info(_: int) -> str:
        start.wait()
        return api.get_info(TRASHED_PROJECT).id

    with ApiClient(emulator.api_url, "expired-token", CLIENT_ID, token_refresher=refresh) as api:
        with ThreadPoolExecutor(max_workers=16) as pool:
            ids = list(pool.map(fetch_info, range(16)))

    assert len(calls) == 1
    assert ids == [TRASHED_PROJECT] * 16


def test_empty_token_raises_config_error(emulator):
    with pytest.raises(ConfigError):
        ApiClient(emulator.api_url, "  \n", CLIENT_ID)


def test_unknown_auth_scheme_raises(emulator):
    with pytest.raises(ConfigError):
        ApiClient(emulator.api_url, TOKEN, CLIENT_ID, auth_scheme="Basic")


# -- errors and retries --------------------------------------------------------


def test_server_errors_retried_until_success(emulator, client):
    set_faults(emulator, queue=[
        {"match": "/project", "method": "GET", "status": 500},
        {"match": "/project", "method": "GET", "status": 500},
    ])
    before = stats(emulator)["api_requests"]

    projects = client.list_projects()

    assert {project.id for project in projects} == SEED_PROJECTS
    assert stats(emulator)["api_requests"] - before == 3


def test_rate_limit_honours_retry_after(emulator):
    delays: list[float] = []
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 429, "retry_after": 1}])
    before = stats(emulator)["api_requests"]

    with ApiClient(emulator.api_url, TOKEN, CLIENT_ID) as api:
        api.retry_policy.sleep = delays.append
        projects = api.list_projects()

    assert delays == [1.0]
    assert {project.id for project in projects} == SEED_PROJECTS
    assert stats(emulator)["api_requests"] - before == 2


def test_retry_after_capped_at_backoff_max(emulator):
    delays: list[float] = []
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 429, "retry_after": 120}])

    with ApiClient(emulator.api_url, TOKEN, CLIENT_ID, backoff_max=2.0) as api:
        api.retry_policy.sleep = delays.append
        api.list_projects()

    assert delays == [2.0]


def test_rate_limit_without_retries_raises(emulator):
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 429, "retry_after": 7}])

    with ApiClient(emulator.api_url, TOKEN, CLIENT_ID, max_retries=0) as api:
        with pytest.raises(RateLimited) as caught:
            api.list_projects()

    assert caught.value.retry_after == 7.0


def test_dropped_connection_is_retried(emulator, client):
    set_faults(emulator, queue=[{"match": "/info", "method": "GET", "drop": True}])

    info = client.get_info(TRASHED_PROJECT)

    assert info.id == TRASHED_PROJECT


def test_error_rate_exhausts_retries(emulator, client):
    set_faults(emulator, error_rate=1.0, error_status=503)
    before = stats(emulator)["api_requests"]

    with pytest.raises(ServerError) as caught:
        client.list_projects()

    assert caught.value.status == 503
    assert stats(emulator)["api_requests"] - before == client.retry_policy.max_retries + 1


def test_error_carries_path_without_host(emulator, client):
    set_faults(emulator, error_rate=1.0, error_status=500)

    with pytest.raises(ServerError) as caught:
        client.get_info(TRASHED_PROJECT)

    assert caught.value.url == f"/v1.0/project/{TRASHED_PROJECT}/info"
    assert caught.value.method == "GET"


def test_not_found_status_not_retried(emulator, client):
    set_faults(emulator, queue=[{"match": "/info", "method": "GET", "status": 404}])
    before = stats(emulator)["api_requests"]

    with pytest.raises(NotFoundError):
        client.get_info(TRASHED_PROJECT)

    assert stats(emulator)["api_requests"] - before == 1


def test_non_json_body_raises_malformed(emulator, client):
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 200, "body": "not json"}])

    with pytest.raises(MalformedResponse) as caught:
        client.list_projects()

    assert "not JSON" in str(caught.value)
    assert caught.value.url == "/v1.0/project"


def test_missing_data_raises_malformed(emulator, client):
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 200, "body": '{"status": "success"}'}])

    with pytest.raises(MalformedResponse):
        client.list_projects()


def test_status_fail_raises_application_error(emulator, client):
    body = '{"status": "fail", "data": {"code": "E001"}}'
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 200, "body": body}])

    with pytest.raises(ApplicationError) as caught:
        client.list_projects()

    assert caught.value.code == "E001"


def test_other_error_code_raises_application_error(emulator, client):
    body = '{"errorCode": "NO_PERMISSION"}'
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 200, "body": body}])

    with pytest.raises(ApplicationError) as caught:
        client.list_projects()

    assert caught.value.code == "NO_PERMISSION"


def test_non_object_items_skipped(emulator, client, caplog):
    body = '{"status": "success", "data": [{"_id": "a", "sk": "project"}, 7, "x"]}'
    set_faults(emulator, queue=[{"match": "/project", "method": "GET", "status": 200, "body": body}])

    with caplog.at_level(logging.WARNING, logger="rayfs.api.client"):
        projects = client.list_projects()

    assert [project.id for project in projects] == ["a"]
    assert len([record for record in caplog.records if "skipped item" in record.getMessage()]) == 2


def test_unknown_sk_error_code_not_found(client):
    with pytest.raises(NotFoundError) as caught:
        client.get_download_link(ATTACHMENT_PROJECT, "attachments:1")

    assert caught.value.status == 200


# -- downloads ---------------------------------------------------------------


def test_download_link_has_record(client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)

    assert link.attachment.name == "file0.png"
    assert link.attachment.size == FILE0_SIZE
    assert "downloadLink" not in link.attachment.raw


def test_download_link_repr_hides_url(client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)

    assert link.url not in repr(link)


def test_read_range_returns_exact_slices(emulator, client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE1_SK)
    whole = download_all(client, link)
    ranges = [(0, 1), (0, 4096), (1000, 1), (65536, 70000), (FILE1_SIZE - 10, 10)]
    before = stats(emulator)["download_bytes"]

    slices = [client.read_range(link, offset, length) for offset, length in ranges]

    assert len(whole) == FILE1_SIZE
    assert whole[:8] == b"\x89PNG\r\n\x1a\n"
    for (offset, length), data in zip(ranges, slices):
        assert data == whole[offset:offset + length], (offset, length)
    assert stats(emulator)["download_bytes"] - before == sum(length for _, length in ranges)


def test_read_range_short_at_end(client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)

    data = client.read_range(link, FILE0_SIZE - 100, 4096)

    assert len(data) == 100


def test_read_range_past_end_empty(client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)

    assert client.read_range(link, FILE0_SIZE, 10) == b""


def test_read_range_accepts_bare_url(client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)

    assert client.read_range(link.url, 0, 8) == b"\x89PNG\r\n\x1a\n"


def test_open_range_streams_tail(client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE1_SK)
    whole = download_all(client, link)

    with client.open_range(link, 100_000, 20_000) as stream:
        data = b"".join(stream)

    assert data == whole[100_000:120_000]


def test_expired_link_raises_link_expired(emulator, client):
    set_faults(emulator, link_lifetime_s=0)
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)

    with pytest.raises(LinkExpired) as caught:
        client.read_range(link, 0, 100)

    assert caught.value.status == 403
    assert link.url not in str(caught.value)


def test_expired_link_on_open_range(emulator, client):
    set_faults(emulator, link_lifetime_s=0)
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)

    with pytest.raises(LinkExpired):
        client.open_range(link, 0)


def test_download_retried_after_server_error(emulator, client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)
    set_faults(emulator, queue=[{"match": "/_files/", "method": "GET", "status": 500}])

    data = client.read_range(link, 0, 8)

    assert data == b"\x89PNG\r\n\x1a\n"


def test_concurrent_reads_from_threads(client):
    link = client.get_download_link(ATTACHMENT_PROJECT, FILE1_SK)
    whole = download_all(client, link)
    offsets = [index * 4000 for index in range(64)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        slices = list(pool.map(lambda offset: client.read_range(link, offset, 5000), offsets))

    for offset, data in zip(offsets, slices):
        assert data == whole[offset:offset + 5000], offset


def test_logs_hide_token_and_link(emulator, client, caplog):
    set_faults(emulator, queue=[{"match": "/_files/", "method": "GET", "status": 503}])

    with caplog.at_level(logging.DEBUG):
        link = client.get_download_link(ATTACHMENT_PROJECT, FILE0_SK)
        client.read_range(link, 0, 10)
        client.list_projects()

    text = "\n".join(record.getMessage() for record in caplog.records)
    path = requests.utils.urlparse(link.url).path
    assert f"download link for project {ATTACHMENT_PROJECT} sk {FILE0_SK}" in text
    assert TOKEN not in text
    assert path not in text


# -- uploads -----------------------------------------------------------------


def upload_and_fetch(client: ApiClient, path, filename: str) -> tuple:
    record = client.upload_attachment(ATTACHMENT_PROJECT, path, filename)
    link = client.get_download_link(ATTACHMENT_PROJECT, record.sk)
    return record, hashlib.sha256(download_all(client, link)).hexdigest()


def test_upload_large_file_round_trips(emulator, client, tmp_path):
    path = tmp_path / "scan.stl"
    with open(path, "wb") as stream:
        for _ in range(10):
            stream.write(os.urandom(MIB))
    progress: list[int] = []

    record = client.upload_attachment(ATTACHMENT_PROJECT, path, "scan.stl", progress=progress.append)
    link = client.get_download_link(ATTACHMENT_PROJECT, record.sk)
    digest = hashlib.sha256(download_all(client, link)).hexdigest()

    assert record.name == "scan.stl"
    assert record.size == 10 * MIB
    assert digest == sha256_file(path)
    assert progress[-1] == 10 * MIB
    assert progress == sorted(progress)


def test_upload_korean_nfd_name_round_trips(client, tmp_path):
    filename = unicodedata.normalize("NFD", "구강 스캔 \"상악\"; 1차.png")
    path = tmp_path / "upload.bin"
    path.write_bytes(os.urandom(5000))

    record, digest = upload_and_fetch(client, path, filename)
    listed = {item.sk: item.name for item in client.get_attachments(ATTACHMENT_PROJECT)}

    assert record.name == filename
    assert listed[record.sk] == filename
    assert digest == sha256_file(path)


def test_upload_empty_file_round_trips(client, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")

    record = client.upload_attachment(ATTACHMENT_PROJECT, path, "empty.txt")
    link = client.get_download_link(ATTACHMENT_PROJECT, record.sk)

    assert record.size == 0
    assert client.read_range(link, 0, 10) == b""


def test_upload_retried_after_server_error(emulator, client, tmp_path):
    path = tmp_path / "retry.bin"
    path.write_bytes(os.urandom(100_000))
    set_faults(emulator, queue=[{"match": "/attachment/add", "method": "POST", "status": 503}])
    before = stats(emulator)["api_requests"]

    record, digest = upload_and_fetch(client, path, "retry.bin")

    assert digest == sha256_file(path)
    assert record.size == 100_000
    assert stats(emulator)["api_requests"] - before == 3


def test_upload_over_limit_not_retried(emulator, client, tmp_path):
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(200_000))
    set_faults(emulator, max_upload_bytes=100_000)
    before = stats(emulator)

    with pytest.raises(HTTPStatusError) as caught:
        client.upload_attachment(ATTACHMENT_PROJECT, path, "large.bin")

    after = stats(emulator)
    assert caught.value.status == 413
    assert after["api_requests"] - before["api_requests"] == 1
    assert after["uploads"] == before["uploads"]


def test_upload_unknown_project_raises(client, tmp_path):
    path = tmp_path / "note.txt"
    path.write_bytes(b"hello")

    with pytest.raises(ApplicationError):
        client.upload_attachment("00000000-0000-0000-0000-000000000000", path, "note.txt")


def test_upload_missing_file_raises(client, tmp_path):
    with pytest.raises(FileNotFoundError):
        client.upload_attachment(ATTACHMENT_PROJECT, tmp_path / "missing.bin", "missing.bin")
