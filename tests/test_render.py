"""Unit tests of rayfs.tree.render: JSON files and sanitized memo pages."""

from __future__ import annotations

import pytest

from rayfs.tree.render import json_bytes, memo_html, sanitize_html

SAMPLE_MEMO = {
    "_id": "f83ce273-f078-4454-8c34-a0cecb903e4e",
    "sk": "memo:1667454117029",
    "comments": [
        {
            "content": "<p>Test Reply</p>\n",
            "created": 1667454126923,
            "groupId": "62dfdb179a4e3409ba649869",
        }
    ],
    "content": "<p>Test Message</p>\n",
    "created": 1667454117029,
    "groupId": "62dfdb179a4e3409ba649869",
}

CSP_META = '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">'


def memo_with(content: str, comment: str = "") -> dict:
    memo = dict(SAMPLE_MEMO)
    memo["content"] = content
    memo["comments"] = [{"contents": comment, "created": 1667454126923, "groupId": "g1"}] if comment else []
    return memo


def page_of(content: str, comment: str = "") -> str:
    return memo_html(memo_with(content, comment), project_name="Case").decode("utf-8")


# json_bytes


def test_json_bytes_exact_output():
    record = {"name": "홍길동", "_id": "fb3ac626", "tags": ["크라운", 1], "empty": {}, "ok": True, "none": None}

    expected = (
        "{\n"
        '  "name": "홍길동",\n'
        '  "_id": "fb3ac626",\n'
        '  "tags": [\n'
        '    "크라운",\n'
        "    1\n"
        "  ],\n"
        '  "empty": {},\n'
        '  "ok": true,\n'
        '  "none": null\n'
        "}\n"
    ).encode("utf-8")

    assert json_bytes(record) == expected


def test_json_bytes_keeps_key_order():
    assert json_bytes({"z": 1, "a": 2}) == b'{\n  "z": 1,\n  "a": 2\n}\n'


def test_json_bytes_escapes_lone_surrogate():
    assert json_bytes({"a": "x\ud800"}) == b'{\n  "a": "x\\ud800"\n}\n'


def test_json_bytes_ends_with_newline():
    assert json_bytes([]) == b"[]\n"


# memo_html: the page


def test_memo_html_sample_contains_message():
    page = memo_html(SAMPLE_MEMO, project_name="Case").decode("utf-8")

    assert "<p>Test Message</p>" in page


def test_memo_html_sample_contains_reply():
    page = memo_html(SAMPLE_MEMO, project_name="Case").decode("utf-8")

    assert "<p>Test Reply</p>" in page


def test_memo_html_shows_times_and_group():
    page = memo_html(SAMPLE_MEMO, project_name="Case").decode("utf-8")

    assert '<time datetime="2022-11-03T05:41:57.029Z">2022-11-03 05:41:57 UTC</time>' in page
    assert '<time datetime="2022-11-03T05:42:06.923Z">2022-11-03 05:42:06 UTC</time>' in page
    assert page.count("<code>62dfdb179a4e3409ba649869</code>") == 2


def test_memo_html_has_title_and_heading():
    page = memo_html(SAMPLE_MEMO, project_name="Case").decode("utf-8")

    assert "<title>Case – memo of 2022-11-03 05:41:57 UTC</title>" in page
    assert "<h1>Case</h1>" in page


def test_memo_html_has_csp_meta():
    page = memo_html(SAMPLE_MEMO, project_name="Case").decode("utf-8")

    assert CSP_META in page


def test_memo_html_has_charset_meta():
    page = memo_html(SAMPLE_MEMO, project_name="Case").decode("utf-8")

    assert page.startswith('<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n')


def test_memo_html_ends_with_newline():
    assert memo_html(SAMPLE_MEMO, project_name="Case").endswith(b"</html>\n")


def test_memo_html_is_deterministic():
    assert memo_html(SAMPLE_MEMO, project_name="Case") == memo_html(SAMPLE_MEMO, project_name="Case")


def test_memo_html_reads_comment_contents():
    page = page_of("<p>memo</p>", comment="<p>from contents</p>")

    assert "<p>from contents</p>" in page


def test_memo_html_without_comments():
    page = page_of("<p>memo</p>")

    assert "Comments" not in page


def test_memo_html_escapes_project_name():
    page = memo_html(SAMPLE_MEMO, project_name="<b>A&B</b>").decode("utf-8")

    assert "<h1>&lt;b&gt;A&amp;B&lt;/b&gt;</h1>" in page


def test_memo_html_keeps_korean_unescaped():
    page = memo_html(memo_with("<p>교합 조정 필요 😀</p>"), project_name="홍길동").decode("utf-8")

    assert "<p>교합 조정 필요 😀</p>" in page
    assert "<h1>홍길동</h1>" in page


def test_memo_html_time_from_string_created():
    memo = memo_with("<p>x</p>")
    memo["created"] = "1667454117029"

    assert "2022-11-03 05:41:57 UTC" in memo_html(memo, project_name="Case").decode("utf-8")


def test_memo_html_time_from_sort_key():
    memo = memo_with("<p>x</p>")
    del memo["created"]

    assert "2022-11-03 05:41:57 UTC" in memo_html(memo, project_name="Case").decode("utf-8")


def test_memo_html_missing_fields():
    page = memo_html({"comments": "not a list"}, project_name="Case").decode("utf-8")

    assert "unknown time" in page
    assert "<code>unknown</code>" in page


# memo_html: hostile content


HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//x.test/a.js></SCRIPT>",
    "<scr<script>ipt>alert(1)</script>",
    "<<script>script>alert(1)<</script>/script>",
    "<img src=x onerror=alert(1)>",
    '<p onerror="alert(1)" onclick=x>p</p>',
    "<svg onload=alert(1)><script>x</script></svg>",
    "<svg/onload=alert(1)>",
    '<a href="javascript:alert(1)">link</a>',
    '<a href=" JaVaScRiPt:alert(1)">link</a>',
    '<a href="java&#x09;script:alert(1)">link</a>',
    '<a href="&#106;avascript:alert(1)">link</a>',
    "<!-- <script>alert(1)</script> -->",
    "<!-- unclosed <script>alert(1)</script>",
    "<iframe src=javascript:alert(1)></iframe>",
    "<math><mtext><script>alert(1)</script></mtext></math>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    "<img src=x onerror=alert(1)",
    "<style>*{x:expression(alert(1))}</style><script>",
]


@pytest.mark.parametrize("content", HOSTILE)
def test_memo_html_neutralises_hostile_markup(content):
    page = page_of(content, comment=content).lower()

    assert "<script" not in page
    assert "onerror" not in page
    assert "onload" not in page
    assert "javascript:" not in page
    assert "<img" not in page
    assert "<svg" not in page
    assert "<iframe" not in page


# sanitize_html: exact output


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("<p>Test Message</p>\n", "<p>Test Message</p>\n"),
        ("<script>alert(1)</script><b>kept</b>", "<b>kept</b>"),
        ("<scr<script>ipt>alert(1)</script>", "ipt&gt;alert(1)"),
        ("<img src=x onerror=alert(1)>after", "after"),
        ('<p style="color:red" onclick="x" class="c">text</p>', "<p>text</p>"),
        ("<svg onload=alert(1)><p>inside</p></svg>after", "after"),
        ("<b>bold <i>both", "<b>bold <i>both</i></b>"),
        ("<b>x</i>y</b>", "<b>xy</b>"),
        ("<ul><li>one<li>two</ul>", "<ul><li>one<li>two</li></li></ul>"),
        ("<!-- note -->visible", "visible"),
        ("<p>a &lt;script&gt; &amp; b</p>", "<p>a &lt;script&gt; &amp; b</p>"),
        ("a < b > c", "a &lt; b &gt; c"),
        ("<blink>old</blink>", "old"),
        ("line<br>break<br/>end", "line<br>break<br>end"),
        ("<b/>x", "<b>x</b>"),
        ("text <b", "text "),
        ("x\x00y\x07z", "xyz"),
        ("<![CDATA[<script>]]>ok", "ok"),
        ("<!DOCTYPE html><?php echo 1 ?>ok", "ok"),
        ("<table><tr><td colspan=2>c</td></tr></table>", "<table><tr><td>c</td></tr></table>"),
    ],
)
def test_sanitize_html_exact_output(fragment, expected):
    assert sanitize_html(fragment) == expected


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ('<a href="https://example.com/a?b=1&c=2">x</a>', '<a href="https://example.com/a?b=1&amp;c=2" rel="noopener noreferrer">x</a>'),
        ('<a href="http://example.com">x</a>', '<a href="http://example.com" rel="noopener noreferrer">x</a>'),
        ('<a href="mailto:lab@example.com">x</a>', '<a href="mailto:lab@example.com" rel="noopener noreferrer">x</a>'),
        ('<a href=" HTTPS://example.com ">x</a>', '<a href="HTTPS://example.com" rel="noopener noreferrer">x</a>'),
        ('<a href="javascript:alert(1)">x</a>', "<a>x</a>"),
        ('<a href="data:text/html,x">x</a>', "<a>x</a>"),
        ('<a href="file:///etc/passwd">x</a>', "<a>x</a>"),
        ('<a href="../info.json">x</a>', "<a>x</a>"),
        ('<a href="https://e.test/" onclick="x" target="_top">x</a>', '<a href="https://e.test/" rel="noopener noreferrer">x</a>'),
        ('<a href=\'https://e.test/"><script>\'>x</a>', '<a href="https://e.test/&quot;&gt;&lt;script&gt;" rel="noopener noreferrer">x</a>'),
    ],
)
def test_sanitize_html_link_schemes(fragment, expected):
    assert sanitize_html(fragment) == expected


def test_sanitize_html_parser_failure_is_escaped():
    result = sanitize_html("<![foo x]><b>kept</b>")

    assert "kept" in result
    assert "<![" not in result
