"""Unit tests of rayfs.tree.names: safe names, shortening, collisions, stamps, probes."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import pytest

from rayfs.tree.names import (
    assign_names,
    is_probe_name,
    lookup_key,
    safe_name,
    shorten,
    stamp,
    with_suffix,
)

KOREAN_NFC = unicodedata.normalize("NFC", "홍길동 스캔")
KOREAN_NFD = unicodedata.normalize("NFD", "홍길동 스캔")


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


# safe_name


def test_safe_name_replaces_slash():
    assert safe_name("upper/lower", fallback="x") == "upper\uff0flower"


def test_safe_name_replaces_every_slash():
    assert safe_name("/a//b/", fallback="x") == "\uff0fa\uff0f\uff0fb\uff0f"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\x00b", "ab"),
        ("tab\there", "tabhere"),
        ("line\nbreak\r", "linebreak"),
        ("del\x7fete", "delete"),
        ("c1\x85\x9fcontrol", "c1control"),
        ("para\u2028graph\u2029", "paragraph"),
    ],
)
def test_safe_name_drops_control_characters(raw, expected):
    assert safe_name(raw, fallback="x") == expected


def test_safe_name_replaces_lone_surrogate():
    assert safe_name("bad\ud800name", fallback="x") == "bad\ufffdname"


def test_safe_name_escapes_single_dot():
    assert safe_name(".", fallback="x") == "\uff0e"


def test_safe_name_escapes_double_dot():
    assert safe_name("..", fallback="x") == "\uff0e\uff0e"


def test_safe_name_escapes_dot_after_cleaning():
    assert safe_name(".\x00.", fallback="x") == "\uff0e\uff0e"


def test_safe_name_keeps_other_dot_names():
    assert safe_name("...", fallback="x") == "..."


def test_safe_name_keeps_dot_file():
    assert safe_name(".profile", fallback="x") == ".profile"


def test_safe_name_empty_uses_fallback():
    assert safe_name("", fallback="fb3ac626") == "fb3ac626"


def test_safe_name_only_controls_uses_fallback():
    assert safe_name("\x00\x01", fallback="fb3ac626") == "fb3ac626"


def test_safe_name_whitespace_uses_fallback():
    assert safe_name(" \t\u3000 ", fallback="fb3ac626") == "fb3ac626"


def test_safe_name_keeps_outer_whitespace():
    assert safe_name("  case 1 ", fallback="x") == "  case 1 "


def test_safe_name_cleans_fallback():
    assert safe_name("", fallback="a/b") == "a\uff0fb"


def test_safe_name_blank_fallback_raises():
    with pytest.raises(ValueError):
        safe_name("", fallback=" ")


def test_safe_name_keeps_korean_nfc():
    assert safe_name(KOREAN_NFC, fallback="x") == KOREAN_NFC


def test_safe_name_keeps_korean_nfd():
    assert safe_name(KOREAN_NFD, fallback="x") == KOREAN_NFD


def test_safe_name_keeps_emoji():
    assert safe_name("smile 😀 👩‍⚕️.png", fallback="x") == "smile 😀 👩‍⚕️.png"


def test_safe_name_shortens_long_name():
    assert safe_name("a" * 296 + ".stl", fallback="x") == "a" * 242 + "~d7ec5a6e.stl"


def test_safe_name_is_idempotent():
    raw = "x/" * 200 + "\x00.dcm"
    once = safe_name(raw, fallback="x")

    assert safe_name(once, fallback="x") == once


@pytest.mark.parametrize(
    "raw",
    ["a" * 400, "가" * 200, "😀" * 100, "/" * 300, "\x00" * 10 + "b" * 300 + ".pdf"],
)
def test_safe_name_never_exceeds_limits(raw):
    result = safe_name(raw, fallback="x")

    assert utf8_len(result) <= 255
    assert "/" not in result
    assert "\x00" not in result


# shorten


def test_shorten_keeps_short_name():
    assert shorten("scan.stl") == "scan.stl"


def test_shorten_keeps_name_at_limit():
    name = "a" * 255
    assert shorten(name) == name


def test_shorten_keeps_extension():
    name = "a" * 296 + ".stl"
    assert utf8_len(name) == 300

    result = shorten(name)

    assert result == "a" * 242 + "~d7ec5a6e.stl"
    assert utf8_len(result) == 255


def test_shorten_without_extension():
    name = "b" * 300

    result = shorten(name)

    assert result == "b" * 246 + "~dccc1450"
    assert utf8_len(result) == 255


def test_shorten_drops_long_extension():
    name = "c" * 280 + "." + "d" * 19

    assert shorten(name) == "c" * 246 + "~ea5e1b48"


def test_shorten_dot_file_has_no_extension():
    name = "." + "e" * 299

    assert shorten(name) == "." + "e" * 245 + "~2d2b44f7"


def test_shorten_cuts_at_character_boundary():
    name = "가" * 100 + ".dcm"
    assert utf8_len(name) == 304

    result = shorten(name)

    assert result == "가" * 80 + "~6f29952c.dcm"
    assert utf8_len(result) == 253


def test_shorten_cuts_emoji_whole():
    result = shorten("😀" * 70)

    assert result == "😀" * 61 + "~6461d28f"


def test_shorten_distinct_names_stay_distinct():
    first = "a" * 296 + ".stl"
    second = "a" * 295 + "b.stl"

    assert shorten(first) != shorten(second)


def test_shorten_is_deterministic():
    name = "환자 " * 40 + ".pdf"

    assert shorten(name) == shorten(name)


def test_shorten_respects_custom_limit():
    assert shorten("a" * 50 + ".stl", limit=20) == "aaaaaaa~d6d3a641.stl"


def test_shorten_rejects_tiny_limit():
    with pytest.raises(ValueError):
        shorten("a" * 20, limit=5)


# with_suffix


def test_with_suffix_before_extension():
    assert with_suffix("scan.stl", "1667454117029", keep_extension=True) == "scan (1667454117029).stl"


def test_with_suffix_at_end_for_projects():
    assert with_suffix("Case v1.2", "fb3ac626", keep_extension=False) == "Case v1.2 (fb3ac626)"


def test_with_suffix_without_extension():
    assert with_suffix("README", "x", keep_extension=True) == "README (x)"


def test_with_suffix_on_dot_file():
    assert with_suffix(".profile", "x", keep_extension=True) == ".profile (x)"


def test_with_suffix_cleans_suffix():
    assert with_suffix("a", "b/c", keep_extension=False) == "a (b\uff0fc)"


def test_with_suffix_reshortens_long_name():
    result = with_suffix("a" * 250 + ".stl", "x", keep_extension=True)

    assert result == "a" * 238 + "~c2a9d98e (x).stl"
    assert utf8_len(result) == 255


def test_with_suffix_keeps_suffix_whole():
    result = with_suffix("가" * 85, "fb3ac626 2", keep_extension=False)

    assert result.endswith(" (fb3ac626 2)")
    assert utf8_len(result) <= 255


def test_with_suffix_rejects_huge_suffix():
    with pytest.raises(ValueError):
        with_suffix("a", "s" * 100, keep_extension=False)


# assign_names


@dataclass
class Item:
    name: str
    created: int
    suffix: str


def assign(items, *, keep_extension=False):
    return assign_names(
        items,
        name_of=lambda item: item.name,
        order_key=lambda item: item.created,
        suffix_of=lambda item: item.suffix,
        keep_extension=keep_extension,
    )


def test_assign_names_keeps_input_order():
    items = [Item("b", 2, "2"), Item("a", 1, "1")]

    assert assign(items) == [(items[0], "b"), (items[1], "a")]


def test_assign_names_three_alike_projects():
    second = Item("Crown", 2000, "334c972a")
    first = Item("Crown", 1000, "fb3ac626")
    third = Item("Crown", 3000, "f83ce273")

    names = dict((item.suffix, name) for item, name in assign([second, first, third]))

    assert names["fb3ac626"] == "Crown"
    assert names["334c972a"] == "Crown (334c972a)"
    assert names["f83ce273"] == "Crown (f83ce273)"


def test_assign_names_equal_attachments():
    items = [Item("scan.stl", 1667454117029, "1667454117029"), Item("scan.stl", 1667459525960, "1667459525960")]

    result = assign(items, keep_extension=True)

    assert result == [(items[0], "scan.stl"), (items[1], "scan (1667459525960).stl")]


def test_assign_names_suffixed_collides_with_bare():
    first = Item("x", 1, "s")
    second = Item("x", 2, "s")
    named_like_suffix = Item("x (s)", 3, "t")

    result = assign([first, second, named_like_suffix])

    assert result == [(first, "x"), (second, "x (s)"), (named_like_suffix, "x (s) (t)")]


def test_assign_names_counts_inside_brackets():
    first = Item("x", 1, "s")
    second = Item("x", 2, "s")
    third = Item("x", 3, "s")
    fourth = Item("x", 4, "s")

    result = assign([first, second, third, fourth])

    assert result == [(first, "x"), (second, "x (s)"), (third, "x (s 2)"), (fourth, "x (s 3)")]


def test_assign_names_counter_skips_taken_name():
    first = Item("x", 1, "s")
    named_like_counter = Item("x (s 2)", 2, "t")
    second = Item("x", 3, "s")
    third = Item("x", 4, "s")

    result = assign([first, named_like_counter, second, third])

    assert result == [(first, "x"), (named_like_counter, "x (s 2)"), (second, "x (s)"), (third, "x (s 3)")]


def test_assign_names_nfc_nfd_collide():
    nfc = Item(KOREAN_NFC, 1, "a1")
    nfd = Item(KOREAN_NFD, 2, "b2")

    result = assign([nfd, nfc])

    assert result == [(nfd, KOREAN_NFD + " (b2)"), (nfc, KOREAN_NFC)]


def test_assign_names_ties_keep_input_order():
    first = Item("x", 5, "a")
    second = Item("x", 5, "b")

    assert assign([first, second]) == [(first, "x"), (second, "x (b)")]


def test_assign_names_adding_later_renames_nothing():
    items = [Item("x", 1, "a"), Item("x", 2, "b"), Item("x (b)", 3, "c")]
    before = [name for _, name in assign(items)]

    after = [name for _, name in assign(items + [Item("x", 4, "d")])]

    assert after[:3] == before
    assert after[3] == "x (d)"


def test_assign_names_makes_names_safe():
    items = [Item("a/b", 1, "1"), Item("", 2, "fb3ac626"), Item("..", 3, "3")]

    assert [name for _, name in assign(items)] == ["a\uff0fb", "fb3ac626", "\uff0e\uff0e"]


def test_assign_names_empty_input():
    assert assign([]) == []


# lookup_key


def test_lookup_key_matches_nfd_and_nfc():
    assert lookup_key(KOREAN_NFD) == lookup_key(KOREAN_NFC)


def test_lookup_key_returns_nfc():
    assert lookup_key(KOREAN_NFD) == KOREAN_NFC


# stamp


def test_stamp_sample_memo_time():
    assert stamp(1667454117029) == "2022-11-03T05-41-57.029Z"


def test_stamp_accepts_numeric_string():
    assert stamp("1667454117029") == "2022-11-03T05-41-57.029Z"


def test_stamp_pads_milliseconds():
    assert stamp(1667454117005) == "2022-11-03T05-41-57.005Z"


def test_stamp_of_zero():
    assert stamp(0) == "1970-01-01T00-00-00.000Z"


def test_stamp_clamps_negative():
    assert stamp(-1667454117029) == "1970-01-01T00-00-00.000Z"


def test_stamp_clamps_far_future():
    assert stamp(10**20) == "9999-12-31T23-59-59.999Z"


@pytest.mark.parametrize("value", [None, "soon", float("nan"), [1]])
def test_stamp_unreadable_is_epoch(value):
    assert stamp(value) == "1970-01-01T00-00-00.000Z"


def test_stamp_of_infinity():
    assert stamp(float("inf")) == "9999-12-31T23-59-59.999Z"


def test_stamp_sorts_like_time():
    times = [1667459525960, 1667454117029, 99, 1667454117030]

    assert sorted(stamp(t) for t in times) == [stamp(t) for t in sorted(times)]


# is_probe_name


@pytest.mark.parametrize(
    "name",
    [
        ".Trash",
        ".Trash-1000",
        ".Trashes",
        ".hidden",
        ".xdg-volume-info",
        "autorun.inf",
        "AUTORUN.INF",
        "desktop.ini",
        "Desktop.ini",
        ".DS_Store",
        "._scan.stl",
        "._",
        ".directory",
        ".thumbnails",
        ".Spotlight-V100",
        ".fseventsd",
        "Thumbs.db",
        "thumbs.db",
        ".localized",
    ],
)
def test_is_probe_name_recognises_probes(name):
    assert is_probe_name(name) is True


@pytest.mark.parametrize(
    "name",
    [
        "scan.stl",
        ".Trash-",
        ".Trash-abc",
        ".Trash-١٢",
        ".trash",
        ".ds_store",
        "folder.jpg",
        ".git",
        "HEAD",
        "autorun.inf.txt",
        "info.json",
        "홍길동",
    ],
)
def test_is_probe_name_rejects_others(name):
    assert is_probe_name(name) is False
