"""File contents generated from records: pretty JSON and readable memo pages.

Both renderers are deterministic, so a file's size can be computed once and
`stat` agrees with every later read.
"""

from __future__ import annotations

import html
import json
import logging
import re
import unicodedata
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any

from rayfs.api.records import Memo, as_int, as_str

logger = logging.getLogger(__name__)

# Elements kept from memo HTML, without attributes except a checked href on <a>.
ALLOWED_TAGS = frozenset(
    {
        "p", "br", "b", "strong", "i", "em", "u", "s", "ul", "ol", "li", "blockquote",
        "pre", "code", "h1", "h2", "h3", "h4", "h5", "h6", "span", "div",
        "table", "thead", "tbody", "tr", "th", "td", "a",
    }
)  # fmt: skip
VOID_TAGS = frozenset({"br"})

# Elements dropped together with everything inside them.
DROPPED_WITH_CONTENT = frozenset(
    {"script", "style", "iframe", "object", "embed", "svg", "math", "template", "noscript"}
)

ALLOWED_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
URL_SCHEME = re.compile(r"([a-z][a-z0-9+.\-]*):")
# Browsers ignore ASCII whitespace and control characters inside a URL scheme.
URL_IGNORED_CHARACTERS = re.compile(r"[\x00-\x20\x7f]+")
# The start of a tag, comment or declaration that the input ends inside of.
INCOMPLETE_MARKUP = re.compile(r"<[a-zA-Z/!?]")

CSP = "default-src 'none'; style-src 'unsafe-inline'"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_MILLIS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

STYLESHEET = """\
body { font: 16px/1.5 system-ui, sans-serif; max-width: 48em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; margin: 0.2em 0 0.8em; }
.memo, .comment { border-left: 3px solid #ccd; padding: 0.2em 1em; margin: 1em 0; }
.comment { border-left-color: #dde; }
pre { white-space: pre-wrap; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; }
"""


def json_bytes(obj: Any) -> bytes:
    """Encode `obj` as pretty-printed UTF-8 JSON with a trailing newline.

    Keys stay in the given order and non-ASCII text is written as is. A lone
    surrogate, which the server can send as a JSON escape such as "\\ud800",
    cannot be encoded as UTF-8, so it is written back as that escape.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return text.encode("utf-8", errors="backslashreplace")


def _readable_time(millis: int) -> str:
    """Format Unix milliseconds as "2022-11-03 05:41:57 UTC", or "unknown time" for 0 or less."""
    if millis <= 0:
        return "unknown time"

    moment = EPOCH + timedelta(milliseconds=min(millis, MAX_MILLIS))
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso_time(millis: int) -> str:
    moment = EPOCH + timedelta(milliseconds=min(max(millis, 0), MAX_MILLIS))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _time_element(millis: int) -> str:
    if millis <= 0:
        return _readable_time(millis)
    return f'<time datetime="{_iso_time(millis)}">{_readable_time(millis)}</time>'


def _group_of(record: dict[str, Any]) -> str:
    return as_str(record.get("groupId", record.get("group_id"))) or "unknown"


def _drop_controls(text: str) -> str:
    """Remove control characters except tab, line feed and carriage return."""
    return "".join(char for char in text if char in "\t\n\r" or unicodedata.category(char) != "Cc")


def _safe_href(value: str) -> str | None:
    """Return the stripped link when its scheme is http, https or mailto, else None.

    Relative links are rejected too, because in a page opened from the mount
    they would point into the local file system.
    """
    normalized = URL_IGNORED_CHARACTERS.sub("", value).lower()
    match = URL_SCHEME.match(normalized)
    if match is None or match.group(1) not in ALLOWED_LINK_SCHEMES:
        return None
    return value.strip()


class _Sanitizer(HTMLParser):
    """Allow-list filter that rebuilds HTML from allowed tags and escaped text only.

    Disallowed tags are removed but their text is kept. Elements of
    DROPPED_WITH_CONTENT are removed with their content, and one that is never
    closed swallows the rest of the input. Comments, declarations and
    processing instructions are dropped. Every allowed element that is still
    open at the end is closed, so memo markup cannot reach into the page around it.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.output: list[str] = []
        self.open_tags: list[str] = []
        self.dropping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROPPED_WITH_CONTENT:
            self.dropping.append(tag)
            return

        if self.dropping or tag not in ALLOWED_TAGS:
            return

        self.output.append(self._start_tag(tag, attrs))
        if tag not in VOID_TAGS:
            self.open_tags.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # "<svg/>" has no content to drop, and "<b/>" opens <b> as browsers do.
        if tag in DROPPED_WITH_CONTENT:
            return
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self.dropping:
            if tag in self.dropping:
                last = len(self.dropping) - 1 - self.dropping[::-1].index(tag)
                del self.dropping[last:]
            return

        if tag not in self.open_tags:
            return

        while self.open_tags:
            closed = self.open_tags.pop()
            self.output.append(f"</{closed}>")
            if closed == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.dropping:
            return
        self.output.append(html.escape(_drop_controls(data), quote=False))

    def close_all(self) -> str:
        """Finish parsing, close every open element and return the sanitized HTML.

        Markup cut off by the end of the input, such as `<img src=x onerror=...`
        without its ">", is dropped as browsers drop it, where html.parser of
        Python 3.11 would report it as text.
        """
        # NOTE: `rawdata`, the input not parsed yet, is an undocumented attribute
        # of HTMLParser. If a Python version drops it, cut-off markup stays escaped text.
        if INCOMPLETE_MARKUP.match(getattr(self, "rawdata", "")):
            self.rawdata = ""
        self.close()
        while self.open_tags:
            self.output.append(f"</{self.open_tags.pop()}>")
        return "".join(self.output)

    @staticmethod
    def _start_tag(tag: str, attrs: list[tuple[str, str | None]]) -> str:
        if tag != "a":
            return f"<{tag}>"

        for name, value in attrs:
            if name != "href" or value is None:
                continue
            href = _safe_href(value)
            if href is not None:
                return f'<a href="{html.escape(href, quote=True)}" rel="noopener noreferrer">'
            break
        return "<a>"


def sanitize_html(fragment: str, *, record_id: str = "") -> str:
    """Return `fragment` reduced to the allowed tags, with every other character escaped.

    If html.parser fails on malformed markup, the whole fragment is shown as
    escaped text in a <pre>, which is safe, and a warning names `record_id`.
    """
    sanitizer = _Sanitizer()
    try:
        sanitizer.feed(fragment)
        return sanitizer.close_all()
    except (AssertionError, AttributeError, ValueError, IndexError) as exc:
        # NOTE: html.parser of Python 3.11 raises AssertionError on "<![" markup
        # with an unknown keyword, such as "<![foo]>", so its failures are caught here.
        logger.warning("record %s: memo HTML could not be parsed, showing it as text: %s", record_id, exc)
        return f"<pre>{html.escape(fragment, quote=False)}</pre>"


def _comment_html(comment: dict[str, Any], *, record_id: str) -> str:
    content = as_str(comment.get("content", comment.get("contents")))
    millis = as_int(comment.get("created"))
    group = html.escape(_group_of(comment), quote=False)
    return (
        '<article class="comment">\n'
        f'<p class="meta">{_time_element(millis)} · group <code>{group}</code></p>\n'
        f'<div class="body">{sanitize_html(content, record_id=record_id)}</div>\n'
        "</article>\n"
    )


def memo_html(memo_raw: dict[str, Any], *, project_name: str) -> bytes:
    """Render one memo and its comments as a standalone HTML5 page in UTF-8.

    The memo's HTML is sanitized with an allow-list (see `sanitize_html`) and
    the page carries a Content-Security-Policy that blocks scripts, so opening
    it from the mount runs nothing. Comments may carry their HTML in "content"
    or "contents", as the vendor's documentation contradicts itself.
    """
    memo = Memo(memo_raw)
    record_id = f"{memo.id} {memo.sk}"
    millis = memo.created or memo.sk_time

    title = html.escape(f"{project_name} – memo of {_readable_time(millis)}", quote=False)
    heading = html.escape(project_name, quote=False)
    group = html.escape(_group_of(memo_raw), quote=False)
    comments = memo.comments

    parts = [
        "<!DOCTYPE html>\n",
        "<html>\n<head>\n",
        '<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>{title}</title>\n",
        f"<style>\n{STYLESHEET}</style>\n",
        "</head>\n<body>\n",
        f"<h1>{heading}</h1>\n",
        f'<p class="meta">Memo, {_time_element(millis)} · group <code>{group}</code></p>\n',
        f'<article class="memo">{sanitize_html(memo.content, record_id=record_id)}</article>\n',
    ]

    if comments:
        parts.append(f"<h2>Comments ({len(comments)})</h2>\n")
        parts.extend(_comment_html(comment, record_id=record_id) for comment in comments)

    parts.append("</body>\n</html>\n")
    return "".join(parts).encode("utf-8", errors="replace")
