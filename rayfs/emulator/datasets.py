"""The datasets the emulator starts with: "empty", "seed" and "demo".

"seed" is the list of records shipped in `datasets/seed.json`. "demo" adds
generated dental cases drawn from a fixed `random.Random` seed, so every load
produces the same records and the same file bytes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from importlib import resources
from typing import Any

from .content import seed_for, write_content
from .db import RecordStore, attachment_filename

logger = logging.getLogger(__name__)

DATASETS = ("empty", "seed", "demo")
DEMO_SEED = 20240521

# 2024-03-04T09:00:00Z, the creation time of the first demo case.
DEMO_START_MS = 1709542800000
DAY_MS = 86_400_000

KIB = 1024
MIB = 1024 * 1024


def load_records(name: str) -> list[dict[str, Any]]:
    """Return the records of dataset `name` in server order."""
    if name == "empty":
        return []
    if name == "seed":
        return _seed_records()
    if name == "demo":
        return _seed_records() + _demo_records()
    raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")


def _seed_records() -> list[dict[str, Any]]:
    text = resources.files(__package__).joinpath("datasets").joinpath("seed.json").read_text(encoding="utf-8")
    return json.loads(text)


def install_dataset(store: RecordStore, files_dir: str, name: str) -> int:
    """Generate the attachment files of dataset `name`, then store its records.

    Files come first, so an interrupted load leaves an empty database and the
    next start loads the dataset again. Returns the number of records stored.
    """
    records = load_records(name)
    infos = {record["_id"]: record for record in records if record.get("sk") == "project"}

    for record in records:
        if str(record.get("sk", "")).startswith("attachments:"):
            write_attachment_file(files_dir, record, infos.get(record["_id"]))

    count = store.upsert(records)
    store.set_meta("dataset", name)
    logger.info("loaded dataset %s: %d records", name, count)
    return count


def write_attachment_file(files_dir: str, record: dict[str, Any], info: dict[str, Any] | None) -> str:
    """Generate the bytes of an attachment record from its `filetype` and `size`.

    `info` is the project's info record, whose name and patient end up inside
    DICOM and PDF files. Returns the path written.
    """
    path = os.path.join(files_dir, attachment_filename(record["_id"], record["sk"]))
    size = int(record.get("size") or 0)
    meta = attachment_meta(record, info)

    kind = write_content(path, str(record.get("filetype") or ""), size, seed_for(record["_id"], record["sk"]), meta)
    set_file_time(path, record)
    logger.debug("generated %s attachment %s %s: %d bytes", kind, record["_id"], record["sk"], size)
    return path


def set_file_time(path: str, record: dict[str, Any]) -> None:
    """Set a file's mtime to the record's `created`, so downloads send it as Last-Modified."""
    created = record.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool) and created > 0:
        os.utime(path, (created / 1000, created / 1000))


def attachment_meta(record: dict[str, Any], info: dict[str, Any] | None) -> dict[str, str]:
    """Return the title and patient fields that generated files embed."""
    info = info or {}
    subject = info.get("subject") if isinstance(info.get("subject"), dict) else {}
    project_name = str(info.get("name") or record["_id"])
    return {
        "title": f"{project_name}: {record.get('name', '')}",
        "patient_name": str(subject.get("name") or ""),
        "patient_id": str(info.get("patientId") or ""),
    }


# Demo cases: (project name, patient name, birth date, treatment, in the trash).
# Two cases share a name and one name contains a slash, as real accounts do.
_DEMO_CASES = (
    ("김민준 상악 크라운", "김민준", "1984-03-12", "crown", False),
    ("Müller Brücke 36-37", "Anna Müller", "1971-09-30", "bridge", False),
    ("이서연 임플란트 #46", "이서연", "1992-11-02", "implant", False),
    ("Dubois couronne 11", "Camille Dubois", "1988-01-21", "crown", False),
    ("García carillas 12-22", "Lucía García", "1995-06-14", "veneer", False),
    ("박지호 하악 브릿지", "박지호", "1967-12-05", "bridge", False),
    ("Smith upper/lower splint", "John Smith", "1979-04-08", "splint", False),
    ("Smith full arch", "Mary Smith", "1958-08-19", "full_arch", False),
    ("Smith full arch", "Peter Smith", "1961-02-27", "full_arch", False),
    ("Nguyễn inlay 26", "Nguyễn Văn An", "1990-10-10", "inlay", False),
    ("최유진 교정 셋업", "최유진", "2004-05-30", "ortho", True),
)

_MEMO_TEXTS = (
    "<p>Please check the margin on the distal side.</p>\n",
    "<p>Patient prefers a slightly lighter shade.</p>\n",
    "<p>인상 채득 완료, 스캔 파일 첨부합니다.</p>\n",
    "<p>교합 확인 부탁드립니다.</p>\n",
    "<p>Bitte Kontaktpunkte prüfen.</p>\n",
    "<p>New scan uploaded, the old one had a gap at 47.</p>\n",
)
_COMMENT_TEXTS = (
    "<p>Confirmed, we will adjust it.</p>\n",
    "<p>확인했습니다.</p>\n",
    "<p>Done, see the new design.</p>\n",
    "<p>OK, danke!</p>\n",
)
_STATUS_TEXTS = ("Request Confirm", "In Progress", "Design Review", "Completed")
_PRODUCTS = {
    "crown": ("Zirconia Crown", 150000),
    "bridge": ("Zirconia Bridge (3 units)", 420000),
    "implant": ("Implant Abutment and Crown", 380000),
    "veneer": ("E.max Veneer", 210000),
    "splint": ("Night Guard Splint", 90000),
    "full_arch": ("Full Arch Denture", 890000),
    "inlay": ("Ceramic Inlay", 130000),
    "ortho": ("Clear Aligner Setup", 650000),
}

# (name, filetype) of the small attachments a case draws from.
_SMALL_ATTACHMENTS = (
    ("photo_frontal.png", "image/png"),
    ("photo_occlusal.png", "image/png"),
    ("upper_jaw.stl", "model/stl"),
    ("lower_jaw.stl", "model/stl"),
    ("bite_registration.stl", "model/stl"),
    ("cbct_slice.dcm", "application/dicom"),
    ("prescription.pdf", "application/pdf"),
)

# Large files, by case index: (name, filetype, size). The sizes fit their format:
# a binary STL is 84 + 50 * n bytes and a DICOM file has an even size.
_LARGE_ATTACHMENTS = {
    1: ("full_arch_scan.stl", "model/stl", 84 + 50 * 1_342_176),
    2: ("cbct_volume.dcm", "application/dicom", 192 * MIB + 4096),
}

# Extra attachments that exercise names: by case index.
_EXTRA_ATTACHMENTS = {
    0: (("파노라마 사진.png", "image/png"),),
    1: (("Röntgenbild.png", "image/png"),),
    7: (("photo.png", "image/png"), ("photo.png", "image/png"), ("notes.txt", "text/plain")),
}


def _small_size(rng: random.Random, filetype: str) -> int:
    if filetype == "model/stl":
        return 84 + 50 * rng.randrange(4_000, 60_000)
    if filetype == "application/dicom":
        return 2 * rng.randrange(128 * KIB, 2 * MIB)
    if filetype == "application/pdf":
        return rng.randrange(3 * KIB, 200 * KIB)
    if filetype == "text/plain":
        return 0
    return rng.randrange(20 * KIB, 1536 * KIB)


def _object_id(rng: random.Random) -> str:
    """Return a 24-digit hex id like the MongoDB ObjectIds that name RAYTeams groups."""
    return f"{rng.getrandbits(96):024x}"


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Clock:
    """Millisecond timestamps that only move forward, so every `sk` of a case is unique."""

    def __init__(self, start_ms: int, rng: random.Random):
        self.now = start_ms
        self.rng = rng

    def advance(self, low_ms: int, high_ms: int) -> int:
        self.now += self.rng.randrange(low_ms, high_ms)
        return self.now


def _demo_records() -> list[dict[str, Any]]:
    rng = random.Random(DEMO_SEED)
    clinic_group = _object_id(rng)
    lab_groups = [_uuid4(rng) for _ in range(3)]

    records: list[dict[str, Any]] = []
    for index, case in enumerate(_DEMO_CASES):
        records.extend(_demo_case(rng, index, case, clinic_group, lab_groups))
    return records


def _demo_case(
    rng: random.Random,
    index: int,
    case: tuple[str, str, str, str, bool],
    clinic_group: str,
    lab_groups: list[str],
) -> list[dict[str, Any]]:
    name, patient, birth, treatment, in_trash = case
    project_id = _uuid4(rng)
    patient_id = f"P-2024-{index + 1:04d}"
    lab_group = lab_groups[index % len(lab_groups)]
    created = DEMO_START_MS + index * 3 * DAY_MS + rng.randrange(0, DAY_MS // 2)
    clock = _Clock(created, rng)

    memos, memo_histories = _demo_memos(rng, clock, project_id, clinic_group, lab_group)
    attachments = _demo_attachments(rng, clock, project_id, index)
    histories = memo_histories + _demo_other_histories(rng, clock, project_id, attachments, lab_group)
    histories.sort(key=lambda record: record["created"])
    orders = _demo_orders(rng, clock, project_id, treatment, patient, birth, patient_id, clinic_group, lab_group)

    groups = [{"_id": project_id, "sk": "project:institute:owner", "group_id": clinic_group, "name": name, "patientId": patient_id}]
    for shared_group in lab_groups[: rng.randrange(1, 3)]:
        stamp = clock.advance(60_000, 3_600_000)
        groups.append(
            {"_id": project_id, "sk": f"project:institute:{stamp}", "group_id": shared_group, "name": name, "patientId": patient_id}
        )

    info = {
        "_id": project_id,
        "sk": "project",
        "region": "ap-northeast-2",
        "name": name,
        "patientId": patient_id,
        "projecttype": "DENTALAVATAR",
        "count": len(attachments),
        "size": sum(record["size"] for record in attachments),
        "ownerGroupId": clinic_group,
        "labId": lab_group,
        "lastUpdateGroupId": rng.choice([clinic_group, lab_group]),
        "status": {"code": "custom", "text": rng.choice(_STATUS_TEXTS)},
        "subject": {"name": patient, "birth": birth},
        "istrash": in_trash,
        "isarchive": False,
        "created": created,
        "updated": clock.now,
    }
    return [info, *memos, *attachments, *histories, *orders, *groups]


def _demo_memos(
    rng: random.Random, clock: _Clock, project_id: str, clinic_group: str, lab_group: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    memos = []
    histories = []
    for _ in range(rng.randrange(1, 4)):
        memo_time = clock.advance(60_000, 6 * 3_600_000)
        content = rng.choice(_MEMO_TEXTS)
        histories.append(
            {
                "_id": project_id,
                "sk": f"his:{memo_time + 1}",
                "data": {"content": content, "type": "create"},
                "updateType": "RAY_LINK_PROJECT_ADDMEMO",
                "created": memo_time + 1,
            }
        )

        comments = []
        for _ in range(rng.randrange(0, 3)):
            comment_time = clock.advance(60_000, 3_600_000)
            comment = rng.choice(_COMMENT_TEXTS)
            comments.append({"content": comment, "created": comment_time, "groupId": lab_group})
            histories.append(
                {
                    "_id": project_id,
                    "sk": f"his:{comment_time + 1}",
                    "data": {"sk": f"memo:{memo_time}", "data": {"content": comment}},
                    "updateType": "RAY_LINK_PROJECT_ADDCOMMENT",
                    "created": comment_time + 1,
                }
            )

        memos.append(
            {
                "_id": project_id,
                "sk": f"memo:{memo_time}",
                "comments": comments,
                "content": content,
                "created": memo_time,
                "groupId": clinic_group,
            }
        )
    return memos, histories


def _demo_attachments(rng: random.Random, clock: _Clock, project_id: str, index: int) -> list[dict[str, Any]]:
    chosen = rng.sample(_SMALL_ATTACHMENTS, rng.randrange(2, 5))
    files = [(name, filetype, _small_size(rng, filetype)) for name, filetype in chosen]
    files += [(name, filetype, _small_size(rng, filetype)) for name, filetype in _EXTRA_ATTACHMENTS.get(index, ())]
    if index in _LARGE_ATTACHMENTS:
        files.append(_LARGE_ATTACHMENTS[index])

    attachments = []
    for name, filetype, size in files:
        stamp = clock.advance(1_000, 600_000)
        attachments.append(
            {
                "_id": project_id,
                "sk": f"attachments:{stamp}",
                "filetype": filetype,
                "name": name,
                "size": size,
                "created": stamp,
            }
        )
    return attachments


def _demo_other_histories(
    rng: random.Random, clock: _Clock, project_id: str, attachments: list[dict[str, Any]], lab_group: str
) -> list[dict[str, Any]]:
    """Return history entries of update types beyond the two the vendor documents."""
    histories = []
    for attachment in attachments[:2]:
        stamp = attachment["created"] + 1
        histories.append(
            {
                "_id": project_id,
                "sk": f"his:{stamp}",
                "data": {"name": attachment["name"], "size": attachment["size"]},
                "updateType": "RAY_LINK_PROJECT_ADDATTACHMENT",
                "created": stamp,
            }
        )

    stamp = clock.advance(60_000, 3_600_000)
    histories.append(
        {
            "_id": project_id,
            "sk": f"his:{stamp}",
            "data": {"status": {"code": "custom", "text": rng.choice(_STATUS_TEXTS)}},
            "updateType": "RAY_LINK_PROJECT_UPDATESTATUS",
            "created": stamp,
        }
    )
    stamp = clock.advance(60_000, 3_600_000)
    histories.append(
        {
            "_id": project_id,
            "sk": f"his:{stamp}",
            "data": {"group_id": lab_group},
            "updateType": "RAY_LINK_PROJECT_SHARE",
            "created": stamp,
        }
    )
    return histories


def _demo_orders(
    rng: random.Random,
    clock: _Clock,
    project_id: str,
    treatment: str,
    patient: str,
    birth: str,
    patient_id: str,
    clinic_group: str,
    lab_group: str,
) -> list[dict[str, Any]]:
    product_name, price = _PRODUCTS[treatment]
    tooth = rng.choice((11, 21, 26, 36, 37, 46))
    orders = []
    for _ in range(rng.randrange(0, 3)):
        created = clock.advance(3_600_000, 2 * DAY_MS)
        status_type = rng.choice(("NEW", "INPROGRESS", "CLOSED"))
        workflow = [{"statusType": "NEW", "created": created}]
        updated = created
        if status_type != "NEW":
            updated = clock.advance(3_600_000, DAY_MS)
            workflow.append({"statusType": status_type, "created": updated})

        orders.append(
            {
                "_id": project_id,
                "sk": f"order:{created}",
                "ownerGroupId": clinic_group,
                "labId": lab_group,
                "status": status_type,
                "statusName": {"NEW": "Requested", "INPROGRESS": "In Production", "CLOSED": "Delivered"}[status_type],
                "statusType": status_type,
                "product": {"currency": "KRW", "discount": rng.choice((0, 0, 10000)), "price": price, "productname": product_name},
                "patientId": patient_id,
                "subject": {"name": patient, "birth": birth},
                "memo": rng.choice(_MEMO_TEXTS),
                "medicalRecords": {"teeth": [tooth], "shade": rng.choice(("A1", "A2", "A3", "B1")), "material": "Zirconia"},
                "treatments": [{"tooth": tooth, "type": treatment.upper(), "material": "Zirconia", "shade": "A2"}],
                "workflow": workflow,
                "created": created,
                "updated": updated,
            }
        )
    return orders
