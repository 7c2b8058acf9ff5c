"""Deterministic attachment bytes: valid PNG, binary STL, DICOM and PDF files.

Every generator writes exactly `size` bytes, derived only from `seed`, so the
same record always gets the same file. Filler bytes come from
`random.Random(seed)`, which makes every offset of a large file distinct and
range reads checkable. Files are written in blocks, never built whole in
memory.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import struct
import zlib
from collections.abc import Callable
from typing import BinaryIO

logger = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20

# STL files with more triangles than this get random-but-finite coordinates
# instead of a computed surface, because the per-triangle Python loop is slow.
STL_SURFACE_MAX_TRIANGLES = 200_000

# Maps every byte value to a printable ASCII letter or digit, for text filler.
_PRINTABLE = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_TO_PRINTABLE = bytes(_PRINTABLE[i % len(_PRINTABLE)] for i in range(256))


class ContentSizeError(ValueError):
    """No valid file of this type has exactly the requested size."""


def seed_for(*parts: str) -> int:
    """Derive a stable 64-bit seed from strings such as a record's `_id` and `sk`."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def write_content(path: str, filetype: str, size: int, seed: int, meta: dict[str, str] | None = None) -> str:
    """Write a file of `filetype` with exactly `size` bytes to `path`, atomically.

    `meta` may carry "title", "patient_name" and "patient_id" for the formats
    that embed them. A size that no valid file of the type can have (an odd
    DICOM size, an STL size that is not 84 + 50 * n) falls back to random
    bytes. Returns the format that was written ("png", "stl", "dicom", "pdf"
    or "random").
    """
    if size < 0:
        raise ValueError(f"invalid attachment size {size}: must be >= 0")

    writer = _writer_for(filetype)
    kind = writer.__name__.removeprefix("_write_") if writer else "random"
    temp_path = f"{path}.partial"

    try:
        with open(temp_path, "wb") as out:
            if writer is not None:
                try:
                    writer(out, size, seed, meta or {})
                except ContentSizeError as exc:
                    logger.debug("writing random bytes for %s: %s", path, exc)
                    out.seek(0)
                    out.truncate()
                    kind = "random"
                    _write_random(out, size, random.Random(seed))
            else:
                _write_random(out, size, random.Random(seed))

            written = out.tell()
        if written != size:
            raise RuntimeError(f"generated {written} bytes for {path}, expected {size}")

        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise

    return kind


def _writer_for(filetype: str) -> Callable[[BinaryIO, int, int, dict[str, str]], None] | None:
    filetype = filetype.split(";", 1)[0].strip().lower()
    if filetype == "image/png":
        return _write_png
    if filetype in ("model/stl", "model/x.stl-binary", "application/sla", "application/vnd.ms-pki.stl"):
        return _write_stl
    if filetype == "application/dicom":
        return _write_dicom
    if filetype == "application/pdf":
        return _write_pdf
    return None


def _write_random(out: BinaryIO, size: int, rng: random.Random) -> None:
    remaining = size
    while remaining > 0:
        count = min(BLOCK_SIZE, remaining)
        out.write(rng.randbytes(count))
        remaining -= count


def _write_printable(out: BinaryIO, size: int, rng: random.Random, crc: int = 0) -> int:
    """Write `size` random letters and digits; returns the running CRC-32 including them."""
    remaining = size
    while remaining > 0:
        count = min(BLOCK_SIZE, remaining)
        block = rng.randbytes(count).translate(_TO_PRINTABLE)
        out.write(block)
        crc = zlib.crc32(block, crc)
        remaining -= count
    return crc


# PNG

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_KEYWORD = b"Comment\x00"
# A chunk costs 12 bytes (length, type, CRC) besides its data.
_PNG_CHUNK_OVERHEAD = 12
_PNG_DIMENSIONS = ((160, 120), (64, 48), (16, 12), (4, 3), (1, 1))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_image(width: int, height: int, rng: random.Random) -> bytes:
    """Return the IHDR and IDAT chunks of an RGB gradient with a seeded tint."""
    tint = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows.append((tint[0] + 255 * x // max(1, width - 1)) % 256)
            rows.append((tint[1] + 255 * y // max(1, height - 1)) % 256)
            rows.append(tint[2])

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))


def _write_png(out: BinaryIO, size: int, seed: int, meta: dict[str, str]) -> None:
    """Write an RGB PNG, padded to `size` with a tEXt "Comment" chunk of filler text."""
    end = _png_chunk(b"IEND", b"")

    for width, height in _PNG_DIMENSIONS:
        rng = random.Random(seed)
        image = _png_image(width, height, rng)
        gap = size - len(_PNG_SIGNATURE) - len(image) - len(end)
        if gap == 0 or gap >= _PNG_CHUNK_OVERHEAD + len(_PNG_TEXT_KEYWORD):
            break
    else:
        raise ContentSizeError(f"no PNG image fits in exactly {size} bytes")

    out.write(_PNG_SIGNATURE)
    out.write(image)

    if gap:
        text_length = gap - _PNG_CHUNK_OVERHEAD
        out.write(struct.pack(">I", text_length) + b"tEXt" + _PNG_TEXT_KEYWORD)
        crc = zlib.crc32(b"tEXt" + _PNG_TEXT_KEYWORD)
        crc = _write_printable(out, text_length - len(_PNG_TEXT_KEYWORD), rng, crc)
        out.write(struct.pack(">I", crc))

    out.write(end)


# Binary STL

_STL_HEADER_SIZE = 84
_STL_TRIANGLE_SIZE = 50


def _write_stl(out: BinaryIO, size: int, seed: int, meta: dict[str, str]) -> None:
    """Write a binary STL: a bumpy dome for small files, finite random triangles for large ones."""
    triangles, remainder = divmod(size - _STL_HEADER_SIZE, _STL_TRIANGLE_SIZE)
    if size < _STL_HEADER_SIZE or remainder:
        raise ContentSizeError(f"a binary STL is 84 + 50 * n bytes, not {size}")

    # A header that starts with "solid" would make readers take the file for ASCII STL.
    header = f"binary STL from rayfs emulator, seed {seed}".encode("ascii")[:80].ljust(80, b" ")
    out.write(header + struct.pack("<I", triangles))

    rng = random.Random(seed)
    if triangles <= STL_SURFACE_MAX_TRIANGLES:
        _write_stl_surface(out, triangles, rng)
    else:
        _write_stl_random(out, triangles, rng)


def _write_stl_surface(out: BinaryIO, triangles: int, rng: random.Random) -> None:
    columns = max(1, math.isqrt(max(1, triangles // 2)))
    rows = max(1, -(-triangles // (2 * columns)))
    bumps = [(rng.uniform(0, columns), rng.uniform(0, rows), rng.uniform(0.2, 0.8)) for _ in range(4)]

    def vertex(x: int, y: int) -> tuple[float, float, float]:
        u = (x - columns / 2) / max(1, columns)
        v = (y - rows / 2) / max(1, rows)
        z = 8.0 * math.exp(-4.0 * (u * u + v * v))
        for bx, by, height in bumps:
            z += height * math.exp(-((x - bx) ** 2 + (y - by) ** 2) / max(1.0, columns / 4) ** 2)
        return (20.0 * u, 20.0 * v, z)

    pack = struct.Struct("<12fH").pack
    buffer = bytearray()
    written = 0
    lower = [vertex(x, 0) for x in range(columns + 1)]
    for y in range(rows):
        upper = [vertex(x, y + 1) for x in range(columns + 1)]

        # Two counter-clockwise triangles (seen from +z) per grid cell.
        for x in range(columns):
            for corner, second, third in (
                (lower[x], lower[x + 1], upper[x + 1]),
                (lower[x], upper[x + 1], upper[x]),
            ):
                if written == triangles:
                    break
                buffer += pack(*_unit_normal(corner, second, third), *corner, *second, *third, 0)
                written += 1

        if len(buffer) >= BLOCK_SIZE:
            out.write(buffer)
            buffer.clear()
        lower = upper

    out.write(buffer)


def _unit_normal(a: tuple[float, ...], b: tuple[float, ...], c: tuple[float, ...]) -> tuple[float, float, float]:
    ux, uy, uz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    vx, vy, vz = c[0] - a[0], c[1] - a[1], c[2] - a[2]
    nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    length = math.sqrt(nx * nx + ny * ny + nz * nz)
    if length == 0.0:
        return (0.0, 0.0, 0.0)
    return (nx / length, ny / length, nz / length)


def _write_stl_random(out: BinaryIO, triangles: int, rng: random.Random) -> None:
    """Write triangles whose vertex floats lie in [32, 128) and whose normals are zero.

    Random bytes become finite floats by forcing each float's top byte (sign
    and high exponent bits, little-endian) to 0x42.
    """
    per_block = BLOCK_SIZE // _STL_TRIANGLE_SIZE
    remaining = triangles
    while remaining > 0:
        count = min(per_block, remaining)
        block = bytearray(rng.randbytes(count * _STL_TRIANGLE_SIZE))
        for offset in range(12):
            block[offset::_STL_TRIANGLE_SIZE] = bytes(count)
        for float_index in range(3, 12):
            block[float_index * 4 + 3 :: _STL_TRIANGLE_SIZE] = b"\x42" * count
        block[48::_STL_TRIANGLE_SIZE] = bytes(count)
        block[49::_STL_TRIANGLE_SIZE] = bytes(count)
        out.write(block)
        remaining -= count


# DICOM (Part 10 file, explicit VR little endian)

_DICOM_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR"}
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_IMPLEMENTATION_CLASS_UID = "2.25.302347017735219462178553532217216541857"
_DICOM_FRAME_SIDE = 512
# A pixel data element and a trailing padding element each have a 12-byte header.
_DICOM_LONG_HEADER = 12


def _dicom_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in _DICOM_LONG_VRS:
        return struct.pack("<HH", group, element) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _dicom_uid(rng: random.Random) -> bytes:
    return f"2.25.{rng.getrandbits(120)}".encode("ascii")


def _dicom_header(rng: random.Random, meta: dict[str, str], rows: int, columns: int, frames: int) -> bytes:
    instance_uid = _dicom_uid(rng)
    study_uid = _dicom_uid(rng)
    series_uid = _dicom_uid(rng)

    file_meta = b"".join(
        [
            _dicom_element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _dicom_element(0x0002, 0x0002, b"UI", _CT_IMAGE_STORAGE.encode("ascii")),
            _dicom_element(0x0002, 0x0003, b"UI", instance_uid),
            _dicom_element(0x0002, 0x0010, b"UI", _EXPLICIT_VR_LITTLE_ENDIAN.encode("ascii")),
            _dicom_element(0x0002, 0x0012, b"UI", _IMPLEMENTATION_CLASS_UID.encode("ascii")),
        ]
    )
    group_length = _dicom_element(0x0002, 0x0000, b"UL", struct.pack("<I", len(file_meta)))

    patient_name = meta.get("patient_name", "Anonymous").replace(" ", "^", 1).encode("utf-8")[:64]
    patient_id = meta.get("patient_id", "").encode("utf-8")[:64]
    # NumberOfFrames has a fixed width so the header size does not depend on it.
    frames_text = str(frames).rjust(8).encode("ascii")

    dataset = b"".join(
        [
            _dicom_element(0x0008, 0x0005, b"CS", b"ISO_IR 192"),
            _dicom_element(0x0008, 0x0016, b"UI", _CT_IMAGE_STORAGE.encode("ascii")),
            _dicom_element(0x0008, 0x0018, b"UI", instance_uid),
            _dicom_element(0x0008, 0x0060, b"CS", b"CT"),
            _dicom_element(0x0008, 0x0070, b"LO", b"rayfs emulator"),
            _dicom_element(0x0010, 0x0010, b"PN", patient_name),
            _dicom_element(0x0010, 0x0020, b"LO", patient_id),
            _dicom_element(0x0020, 0x000D, b"UI", study_uid),
            _dicom_element(0x0020, 0x000E, b"UI", series_uid),
            _dicom_element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
            _dicom_element(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
            _dicom_element(0x0028, 0x0008, b"IS", frames_text),
            _dicom_element(0x0028, 0x0010, b"US", struct.pack("<H", rows)),
            _dicom_element(0x0028, 0x0011, b"US", struct.pack("<H", columns)),
            _dicom_element(0x0028, 0x0100, b"US", struct.pack("<H", 16)),
            _dicom_element(0x0028, 0x0101, b"US", struct.pack("<H", 16)),
            _dicom_element(0x0028, 0x0102, b"US", struct.pack("<H", 15)),
            _dicom_element(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
        ]
    )
    return bytes(128) + b"DICM" + group_length + file_meta + dataset


def _dicom_layout(budget: int) -> tuple[int, int, int, int]:
    """Split `budget` bytes into (rows, columns, frames, padding) of 16-bit pixel data.

    `padding` is either 0 or at least 12, the size of a padding element header.
    """
    frame_bytes = _DICOM_FRAME_SIDE * _DICOM_FRAME_SIDE * 2
    if budget >= frame_bytes:
        frames, padding = divmod(budget, frame_bytes)
        if 0 < padding < _DICOM_LONG_HEADER:
            if frames == 1:
                side = _DICOM_FRAME_SIDE - 1
                return side, side, 1, budget - 2 * side * side
            frames -= 1
            padding += frame_bytes
        return _DICOM_FRAME_SIDE, _DICOM_FRAME_SIDE, frames, padding

    side = math.isqrt(budget // 2)
    while side > 0 and 0 < budget - 2 * side * side < _DICOM_LONG_HEADER:
        side -= 1
    if side == 0:
        raise ContentSizeError(f"no DICOM image fits in {budget} bytes of pixel data")
    return side, side, 1, budget - 2 * side * side


def _write_dicom(out: BinaryIO, size: int, seed: int, meta: dict[str, str]) -> None:
    """Write a 16-bit CT image (noise) with Data Set Trailing Padding to reach `size`."""
    if size % 2:
        raise ContentSizeError(f"a DICOM file has an even size, not {size}")

    probe = _dicom_header(random.Random(seed), meta, 1, 1, 1)
    budget = size - len(probe) - _DICOM_LONG_HEADER
    if budget < 2:
        raise ContentSizeError(f"a DICOM file needs more than {size} bytes")
    rows, columns, frames, padding = _dicom_layout(budget)

    rng = random.Random(seed)
    header = _dicom_header(rng, meta, rows, columns, frames)
    pixel_bytes = rows * columns * 2 * frames
    out.write(header)
    out.write(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00" + struct.pack("<I", pixel_bytes))
    _write_random(out, pixel_bytes, rng)

    if padding:
        out.write(struct.pack("<HH", 0xFFFC, 0xFFFC) + b"OB\x00\x00" + struct.pack("<I", padding - _DICOM_LONG_HEADER))
        _write_random(out, padding - _DICOM_LONG_HEADER, rng)


# PDF

_PDF_HEADER = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
_PDF_LINE = 80


def _pdf_text(value: str) -> bytes:
    """Encode a PDF text string as UTF-16BE hex, which keeps Korean and accented names."""
    return b"<FEFF" + value.encode("utf-16-be").hex().upper().encode("ascii") + b">"


def _pdf_literal(value: str) -> bytes:
    ascii_text = value.encode("ascii", "replace").decode("ascii")
    escaped = ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped})".encode("ascii")


def _pdf_objects(meta: dict[str, str]) -> list[bytes]:
    title = meta.get("title", "Attachment")
    lines = [title, f"Patient: {meta.get('patient_name', '')} {meta.get('patient_id', '')}", "Generated by the rayfs emulator."]
    text = b"BT /F1 14 Tf 56 780 Td 18 TL " + b" ".join(_pdf_literal(line) + b" '" for line in lines) + b" ET"

    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title " + _pdf_text(title) + b" /Producer (rayfs emulator) >>",
    ]


def _pdf_tail(objects: list[bytes], start: int) -> bytes:
    """Return the objects, cross-reference table and trailer placed at byte offset `start`."""
    body = bytearray()
    offsets = []
    for number, content in enumerate(objects, start=1):
        offsets.append(start + len(body))
        body += b"%d 0 obj\n" % number + content + b"\nendobj\n"

    xref_offset = start + len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        body += b"%010d 00000 n \n" % offset
    body += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, len(objects))
    body += b"startxref\n%d\n%%%%EOF\n" % xref_offset
    return bytes(body)


def _write_pdf(out: BinaryIO, size: int, seed: int, meta: dict[str, str]) -> None:
    """Write a one-page PDF padded to `size` with comment lines after the header."""
    objects = _pdf_objects(meta)

    # The startxref number grows with the padding, so settle the padding length.
    padding = 0
    for _ in range(8):
        total = len(_PDF_HEADER) + padding + len(_pdf_tail(objects, len(_PDF_HEADER) + padding))
        if total == size:
            break
        padding += size - total
        if padding < 0:
            raise ContentSizeError(f"a PDF needs more than {size} bytes")
    else:
        raise ContentSizeError(f"no PDF layout has exactly {size} bytes")

    rng = random.Random(seed)
    out.write(_PDF_HEADER)
    remaining = padding
    while remaining > 0:
        line = min(_PDF_LINE, remaining)
        if line == 1:
            out.write(b"\n")
        else:
            out.write(b"%")
            _write_printable(out, line - 2, rng)
            out.write(b"\n")
        remaining -= line
    out.write(_pdf_tail(objects, len(_PDF_HEADER) + padding))
