"""``md_escape`` / ``md_code``: user text reaches markdown inert (issue 12, "Seen" 4).

The browser tests (``tests/e2e/test_hostile_markdown_e2e.py``) check the rendered page; these pin the helpers'
output, including the cases CommonMark makes subtle (backtick runs, padding, autolinks).
"""

from __future__ import annotations

import re

import pytest

from ui.common import MAX_SHOWN_CHARS, error_line, md_code, md_escape, md_plain


@pytest.mark.parametrize("text, expected", [
    ("x", "`x`"),
    ("a`b", "``a`b``"),
    ("``x", "``` ``x ```"),
    ("x`", "`` x` ``"),
    (" lead", "`  lead `"),
    ("", "(empty)"),
    ("a\nb\rc", "`a b c`"),
])
def test_md_code_fence_outlasts_content(text, expected):
    """The fence is longer than any backtick run inside, so the span cannot close early."""
    assert md_code(text) == expected


def test_md_code_clips_long_values():
    """A 10 kB URL value is shown as its first characters and an ellipsis."""
    out = md_code("x" * 10_000)
    assert len(out) == MAX_SHOWN_CHARS + 2 and out.endswith("\u2026`")


@pytest.mark.parametrize("text", [
    "[Sign in](https://evil.example)", "![x](https://e/i.png)", ":red[x] :material/lock:",
    "$x^2$", "<img src=x>", "&#96;code&#96;", "*bold* _it_ ~~s~~ # h", "| a | b |",
])
def test_md_escape_escapes_every_markdown_character(text):
    """No unescaped ASCII punctuation is left: nothing can start a markdown construct."""
    out = md_escape(text)
    assert re.search(r"(?<!\\)[!\"#$%&'()*+,\-./:;<=>?@\[\]^_`{|}~]", out.replace("\\\\", "")) is None
    assert out.replace("\\", "").replace("\u2060", "") == text


@pytest.mark.parametrize("text", ["https://evil.example", "HTTP://x", "www.evil.example",
                                  "mail me: a@evil.example", "ftp://x", "mailto:a"])
def test_md_escape_breaks_autolinks(text):
    """GFM autolinks bare URLs after escapes resolve: a word joiner splits every trigger."""
    out = md_escape(text)
    assert "\u2060" in out
    plain = out.replace("\\", "").replace("\u2060", "")
    assert plain == text
    assert not re.search(r"(?i)(https?|ftp|mailto):|www\.|\w@", out.replace("\\", ""))


def test_md_escape_one_line_and_clipped():
    """Line breaks and control characters become spaces; long text is cut."""
    assert md_escape("a\n\nb\x00c") == "a b c"
    assert md_escape("y" * 5000, limit=100) == "y" * 99 + "\u2026"


@pytest.mark.parametrize("message, expected", [
    ("`ranks` should list at least one rank", "`ranks`"),
    ("`true_rank` = 65 is larger", "`true_rank`"),
    ("got '1` [x](https://e.x) `' in 'a'", None),
    ("tensor `a](https://e.x)` is odd", None),
])
def test_error_line_keeps_plain_code_spans_only(message, expected):
    """The engine's plain code spans render as code; anything else is escaped."""
    out = error_line(message)
    if expected is not None:
        assert out.startswith(expected) and out.count("`") == 2
    else:
        assert "](" not in out.replace("\\]\\(", "")
        assert "\\`" in out
    assert md_plain(out) == message
