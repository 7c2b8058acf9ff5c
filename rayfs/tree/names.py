"""File names of the mount: making server names safe, resolving collisions, time stamps.

Everything here is pure string logic. Names are `str`, and byte limits count
the UTF-8 encoding of a name.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# NAME_MAX of Linux: the maximum length of one path component, in bytes.
NAME_MAX_BYTES = 255

# An extension is kept when shortening only if ".ext" has at most this many bytes.
MAX_EXTENSION_BYTES = 16

# with_suffix() keeps " (suffix)" whole, so it must leave room for a shortened stem.
MAX_SUFFIX_BYTES = 64

SLASH_REPLACEMENT = "\uff0f"  # FULLWIDTH SOLIDUS
DOT_REPLACEMENT = "\uff0e"  # FULLWIDTH FULL STOP
LINE_SEPARATORS = frozenset("\u2028\u2029")

# Unix milliseconds of 1970-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z.
MIN_STAMP_MILLIS = 0
MAX_STAMP_MILLIS = 253_402_300_799_999
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Names that file managers and desktop shells look up by themselves on every
# mounted folder. Matched exactly unless listed as case-insensitive.
PROBE_NAMES = frozenset(
    {
        ".Trash",  # freedesktop.org Trash spec: per-volume trash (GIO, KDE)
        ".Trashes",  # macOS Finder: per-volume trash
        ".hidden",  # GTK file chooser and Nautilus: list of names to hide
        ".xdg-volume-info",  # GVfs: volume name and icon
        ".DS_Store",  # macOS Finder: folder view settings
        ".directory",  # KDE Dolphin: folder view settings
        ".thumbnails",  # old freedesktop.org thumbnail folder
        ".Spotlight-V100",  # macOS Spotlight index
        ".fseventsd",  # macOS file-system event log
        ".localized",  # macOS Finder: localized folder names
    }
)
PROBE_NAMES_ANY_CASE = frozenset(
    {
        "autorun.inf",  # Windows AutoPlay, also checked by GIO and Nautilus
        "desktop.ini",  # Windows Explorer: folder view settings
        "thumbs.db",  # Windows Explorer: thumbnail cache
    }
)
TRASH_UID_PREFIX = ".Trash-"  # freedesktop.org Trash spec: ".Trash-<uid>"
APPLEDOUBLE_PREFIX = "._"  # macOS AppleDouble files carrying resource forks and xattrs


def utf8_len(text: str) -> int:
    """Return the length of `text` in UTF-8 bytes."""
    return len(text.encode("utf-8"))


def _clean_characters(name: str) -> str:
    """Drop control characters, replace lone surrogates and "/" in `name`.

    Lone surrogates (category Cs) can come from JSON escapes such as "\\ud800".
    They cannot be encoded as UTF-8, so they become U+FFFD.
    """
    characters = []
    for char in name:
        category = unicodedata.category(char)
        if category == "Cc" or char in LINE_SEPARATORS:
            continue
        if category == "Cs":
            characters.append("\ufffd")
        elif char == "/":
            characters.append(SLASH_REPLACEMENT)
        else:
            characters.append(char)
    return "".join(characters)


def _cut_utf8(text: str, max_bytes: int) -> str:
    """Return the longest prefix of `text` of at most `max_bytes` UTF-8 bytes, whole characters only."""
    if max_bytes <= 0:
        return ""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _split_extension(name: str) -> tuple[str, str]:
    """Split `name` into stem and ".ext" when the extension is short and the stem non-empty.

    Only the last extension counts, so "scan.tar.gz" splits into "scan.tar" and ".gz".
    A dot file such as ".bashrc" has no extension.
    """
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""

    extension = name[dot:]
    if utf8_len(extension) > MAX_EXTENSION_BYTES:
        return name, ""

    return name[:dot], extension


def _hash_tag(original: str) -> str:
    """Return "~" and the first 8 hex digits of the SHA-256 of `original` in UTF-8."""
    return "~" + hashlib.sha256(original.encode("utf-8")).hexdigest()[:8]


def _shortened_stem(stem: str, room: int, original: str) -> str:
    """Cut `stem` so that it plus the hash tag of `original` fits in `room` bytes."""
    tag = _hash_tag(original)
    return _cut_utf8(stem, room - utf8_len(tag)) + tag


def shorten(name: str, limit: int = NAME_MAX_BYTES) -> str:
    """Shorten `name` to at most `limit` UTF-8 bytes, keeping its extension and adding a hash.

    The stem is cut at a character boundary and followed by "~" and the first
    8 hex digits of the SHA-256 of the whole original name. So distinct long
    names stay distinct, and the result is the same on every run. A name within
    the limit is returned unchanged. The extension is dropped only when `limit`
    leaves no room for it. Raises ValueError when `limit` cannot hold the
    9-byte hash tag.
    """
    if utf8_len(name) <= limit:
        return name

    tag_bytes = utf8_len(_hash_tag(name))
    if limit < tag_bytes:
        raise ValueError(f"name limit {limit} is below the {tag_bytes} bytes of the hash tag")

    stem, extension = _split_extension(name)
    room = limit - utf8_len(extension)
    if room < tag_bytes:
        stem, extension, room = name, "", limit

    return _shortened_stem(stem, room, name) + extension


def safe_name(name: str, *, fallback: str) -> str:
    """Make a server-provided name safe to use as one path component.

    "/" becomes "／" (U+FF0F). Control characters (Unicode category Cc, and
    U+2028, U+2029) are dropped and lone surrogates become U+FFFD. The names
    "." and ".." become "．" and "．．" (U+FF0E). Leading and trailing
    whitespace is kept, but an empty or all-whitespace result is replaced by
    `fallback`, which goes through the same steps. Names over 255 UTF-8 bytes
    are shortened with `shorten`. The result never contains "/" or NUL and
    never exceeds 255 bytes. Raises ValueError when `fallback` itself is blank,
    because that is a bug of the caller.
    """
    cleaned = _clean_characters(name)

    if not cleaned.strip():
        cleaned = _clean_characters(fallback)
        if not cleaned.strip():
            raise ValueError(f"fallback name {fallback!r} is empty after cleaning")

    if cleaned in (".", ".."):
        cleaned = DOT_REPLACEMENT * len(cleaned)

    return shorten(cleaned)


def with_suffix(name: str, suffix: str, *, keep_extension: bool) -> str:
    """Add " (suffix)" to a safe name, before its extension or at the end.

    Attachments use keep_extension=True ("scan (1667454117029).stl") so the
    file type stays visible, projects use False. When the result would exceed
    255 bytes the stem is shortened as in `shorten`, with the hash of the whole
    `name`, and " (suffix)" is kept whole. The suffix is cleaned like a name.
    Raises ValueError when " (suffix)" exceeds MAX_SUFFIX_BYTES.
    """
    bracket = f" ({_clean_characters(suffix)})"
    if utf8_len(bracket) > MAX_SUFFIX_BYTES:
        raise ValueError(f"name suffix {suffix!r} is longer than {MAX_SUFFIX_BYTES - 3} bytes")

    stem, extension = _split_extension(name) if keep_extension else (name, "")
    candidate = stem + bracket + extension
    if utf8_len(candidate) <= NAME_MAX_BYTES:
        return candidate

    room = NAME_MAX_BYTES - utf8_len(bracket) - utf8_len(extension)
    return _shortened_stem(stem, room, name) + bracket + extension


def lookup_key(name: str) -> str:
    """Return the NFC form of `name`, which lookups compare.

    macOS sends names in NFD, where a Hangul syllable is split into its jamo,
    while the server and Linux clients usually send NFC.
    """
    return unicodedata.normalize("NFC", name)


def assign_names(
    items: Iterable[T],
    *,
    name_of: Callable[[T], str],
    order_key: Callable[[T], Any],
    suffix_of: Callable[[T], str],
    keep_extension: bool,
) -> list[tuple[T, str]]:
    """Give every item a unique safe name; return (item, name) pairs in input order.

    `name_of` returns the item's name, raw or already passed through
    `safe_name`. Each name is made safe here again (which leaves a safe name
    unchanged), and an empty one becomes `suffix_of(item)`.

    Items are visited in `order_key` order, earliest first, ties in input order.
    An item keeps its name unless an earlier item already took it. Otherwise
    it gets `with_suffix(name, suffix_of(item))`, and while that is taken too,
    " 2", " 3", ... are added inside the brackets. Names compare by
    `lookup_key`, so NFC and NFD spellings collide. Because an item's name
    depends only on earlier items, adding an item that sorts last never
    renames another one. Removing an item can rename later ones.
    """
    indexed = list(enumerate(items))
    ordered = sorted(indexed, key=lambda pair: order_key(pair[1]))

    used_keys: set[str] = set()
    names: dict[int, str] = {}
    for index, item in ordered:
        suffix = suffix_of(item)
        name = safe_name(name_of(item), fallback=suffix)

        candidate = name
        counter = 1
        while lookup_key(candidate) in used_keys:
            counter += 1
            bracket_text = suffix if counter == 2 else f"{suffix} {counter - 1}"
            candidate = with_suffix(name, bracket_text, keep_extension=keep_extension)

        if candidate != name:
            logger.debug("name %r is taken, using %r (suffix %r)", name, candidate, suffix)
        used_keys.add(lookup_key(candidate))
        names[index] = candidate

    return [(item, names[index]) for index, item in indexed]


def stamp(millis: int) -> str:
    """Format Unix milliseconds as a sortable, colon-free UTC time: "2022-11-03T05-41-57.029Z".

    Does not raise for any number, string or None. A numeric string is accepted
    because the server sends some times as strings. A value that is not a
    number becomes 1970, and values before 1970 or after 9999 are clamped to
    those years.
    """
    try:
        value = int(millis)
    except (TypeError, ValueError, OverflowError):
        value = _parse_float_millis(millis)

    value = min(max(value, MIN_STAMP_MILLIS), MAX_STAMP_MILLIS)
    moment = EPOCH + timedelta(milliseconds=value)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}-{moment.minute:02d}-{moment.second:02d}"
        f".{moment.microsecond // 1000:03d}Z"
    )


def _parse_float_millis(value: Any) -> int:
    """Read a time such as "1.667454117029e12" or 1e400; anything unreadable or NaN becomes 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return MIN_STAMP_MILLIS

    if number != number:
        return MIN_STAMP_MILLIS
    if number > MAX_STAMP_MILLIS:
        return MAX_STAMP_MILLIS
    if number < MIN_STAMP_MILLIS:
        return MIN_STAMP_MILLIS
    return int(number)


def is_probe_name(name: str) -> bool:
    """Tell whether `name` is one that file managers look up on their own.

    The mount serves such lookups from cached listings, so that browsing a
    folder sends no API requests for names that do not exist.
    """
    if name in PROBE_NAMES or name.lower() in PROBE_NAMES_ANY_CASE:
        return True

    if name.startswith(APPLEDOUBLE_PREFIX):
        return True

    uid = name[len(TRASH_UID_PREFIX) :] if name.startswith(TRASH_UID_PREFIX) else ""
    return uid.isascii() and uid.isdigit()
