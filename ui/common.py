"""Helpers every page shares: page setup and sidebar, URL-bound settings, progress, errors,
charts and downloads.

Nothing here computes: the engine (``lorarank``) does, reached through the cached wrappers of
each page's ``ui/<page>.py`` module.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import string
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import streamlit as st
from streamlit.errors import StreamlitAPIException

from lorarank import documents
from lorarank.documents import parse_numbers
from lorarank.errors import LoraRankError

from .navigation import ROOT, STATE_PREFIXES, PageInfo, available_pages, page_for

if TYPE_CHECKING:  # pandas is imported by the pages that draw tables, not by the home page
    import pandas as pd

__all__ = [
    "ROOT",
    "setup_page",
    "sidebar",
    "Setting",
    "parse_url_value",
    "check_url",
    "parse_ranks",
    "setting_widget",
    "url_settings",
    "Markdown",
    "md",
    "md_escape",
    "md_code",
    "md_text",
    "md_param",
    "md_plain",
    "notation",
    "copy_link",
    "show_errors",
    "error_line",
    "stop_on_error",
    "progress_bar",
    "whole_run",
    "progress_text",
    "chart_spec",
    "show_chart",
    "download_buttons",
    "frame_csv",
    "table_height",
    "dash_missing",
    "markdown_table",
    "number_column",
]

# --------------------------------------------------------------------------------------------
# Pages and navigation (the registry: ui.navigation)
# --------------------------------------------------------------------------------------------

#: Session-state key holding the title of the page that ran last.
CURRENT_PAGE_KEY = "lorarank_page"
def setup_page(script: str, *, icon: str | None = None) -> PageInfo:
    """Set the browser tab title and layout, ask for sign-in when the deployment configures it
    (:mod:`ui.auth`), and draw the shared sidebar. Call first on a page.

    Parameters
    ----------
    script : str
        The page script's ``__file__`` (or its label): its title and icon come from its entry
        in :data:`ui.navigation.PAGES`. An unregistered script is titled by ``script`` itself.
    icon : str, optional
        Overrides the registered icon.

    Returns
    -------
    PageInfo
        The page's registry entry.
    """
    from .preload import visiting

    visiting()  # the server's warm-up waits: this visit's imports first
    page = page_for(script) or PageInfo(script, script, ":material/insights:", "")
    title = page.label
    st.set_page_config(page_title=f"{title} · lorarank", page_icon=icon or page.icon,
                       layout="wide")
    from . import uploads  # server upkeep: uploads stay in memory, closed sessions leave

    uploads.keep_uploads_in_memory()
    uploads.start_janitor()
    from .auth import require_login

    require_login()  # stops here with a sign-in screen when [auth] is configured
    forget_other_pages(title)
    sidebar()
    return page


#: The "Copy link" button: copies the address the browser shows, which holds every setting of
#: the view (its widgets are bound to the URL) and the open tab. Our own static markup and
#: script, no user text; a browser without the clipboard API (an http:// host that is not
#: localhost) gets the link in a prompt to copy by hand.
COPY_LINK_HTML = """<button id="lorarank-copy-link" type="button" title="Copy the link to this view: every setting and the open tab are in it (uploaded files are not)" style="font:inherit;font-size:0.875rem;color:inherit;background:transparent;cursor:pointer;border:1px solid color-mix(in srgb, currentColor 25%, transparent);border-radius:0.5rem;padding:0.5rem 0.75rem;white-space:nowrap;line-height:1.6">Copy link</button>
<script>
(() => {
  const button = document.getElementById("lorarank-copy-link");
  if (!button || button.dataset.ready) return;
  button.dataset.ready = "1";
  button.addEventListener("click", async () => {
    const link = window.location.href;
    try {
      await navigator.clipboard.writeText(link);
      button.textContent = "Link copied";
    } catch (err) {
      window.prompt("Copy this link:", link);
    }
    setTimeout(() => { button.textContent = "Copy link"; }, 2000);
  });
})();
</script>"""


def copy_link(container: Any = None) -> None:
    """Draw the "Copy link" button (:data:`COPY_LINK_HTML`) in ``container`` (default: here)."""
    where = st if container is None else container
    # one element for both: the chips' style (global CSS) rides along with the button
    where.html(CHIP_STYLE + COPY_LINK_HTML, width="content", unsafe_allow_javascript=True)


#: The pages' own CSS, sent with every page's Copy link button (:func:`copy_link`): one
#: element, not two.
#: - Selected options of a multiselect ("chips") are white text on the theme's primary colour,
#:   which in dark mode (#7b93ff, light enough for accents on a dark page) gives 2.8:1. Streamlit
#:   has no theme option for them: they get the light theme's indigo in both themes (5.7:1).
#: - A markdown table (:func:`markdown_table`, a page's first result) wider than the window
#:   scrolls inside itself, as a data grid does, instead of widening the page on a phone.
CHIP_STYLE = ('<style>[data-testid="stMultiSelectTagsContainer"] span[data-tag]'
              '{background-color:#3b5bdb !important;color:#ffffff !important}'
              '[data-testid="stMarkdownContainer"] table{display:block;max-width:100%;overflow-x:auto}'
              '</style>')


def forget_other_pages(title: str) -> None:
    """On arriving from another page, drop the URL-bound settings it left in session state.

    Pages share readable setting names (``seed``, ``ranks``, ``steps``). Switching pages drops
    the query parameters, so the new page should show its own defaults; a value left behind by
    the previous page's widget would otherwise surface one rerun later.
    """
    previous = st.session_state.get(CURRENT_PAGE_KEY)
    if previous is not None and previous != title:
        for key in list(st.session_state.keys()):
            if (isinstance(key, str) and not key.startswith(STATE_PREFIXES)
                    and key not in st.query_params):
                del st.session_state[key]
    st.session_state[CURRENT_PAGE_KEY] = title


def sidebar() -> None:
    """The shared navigation: a readable link to every existing page."""
    with st.sidebar:
        st.markdown("**lorarank**")
        for page in available_pages():
            st.page_link(page.path, label=page.label, icon=page.icon)
        st.caption("What LoRA rank do you need, and what did your adapter actually learn?")


# --------------------------------------------------------------------------------------------
# Settings bound to the URL
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """A page input that lives in the URL, so a copied link reproduces the view.

    Attributes
    ----------
    key : str
        Widget key, session-state key and query-parameter name at once (``?true_rank=4``).
        Keep it short and readable; unique within its page.
    label, help : str
        Shown by the widget; ``help`` is the definition of the number.
    default : int, float, str or None
        Value when the URL does not set it. ``None`` (float kind only) means "leave it to the
        engine's default", shown as ``placeholder``.
    kind : {"int", "float", "choice", "text"}
        ``int``/``float``: number input with ``min_value``/``max_value``; ``choice``: one of
        ``options`` (radio, or a select box when ``select=True``); ``text``: free text that the
        page parses itself (e.g. a list of ranks).
    labels : tuple of (option, label) pairs
        What a ``choice`` widget shows for an option (``"recommended_rank"`` ->
        ``"recommended rank"``); the option stays the widget's value. Streamlit writes the
        label to the URL; :func:`check_url` takes the option there too.
    """

    key: str
    label: str
    default: Any
    help: str
    kind: str = "int"
    min_value: float | None = None
    max_value: float | None = None
    step: float | None = None
    format: str | None = None
    options: tuple[str, ...] = ()
    select: bool = False
    placeholder: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("int", "float", "choice", "text"):
            raise ValueError(f"Setting {self.key!r}: unknown kind {self.kind!r}")
        if self.kind == "choice" and self.default not in self.options:
            raise ValueError(f"Setting {self.key!r}: default {self.default!r} not in options")


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_url_value(setting: Setting, raw: str) -> Any:
    """The value a hand-written query parameter asks for, or ValueError with the reason.

    The reason completes the sentence "The link sets `key=raw`, but ..." (see
    :func:`check_url`).
    """
    raw = raw.strip()
    if setting.kind == "text":
        return raw
    if setting.kind == "choice":
        by_label = {label: option for option, label in setting.labels}
        if raw in by_label:  # a labelled option is written to the URL as its label
            return by_label[raw]
        if raw not in setting.options:
            raise ValueError(f"{setting.label} should be one of {', '.join(setting.options)}")
        return raw
    if raw == "" and setting.default is None:
        return None
    try:
        number = float(raw)
    except ValueError:
        what = "a whole number" if setting.kind == "int" else "a number"
        raise ValueError(f"{setting.label} should be {what}") from None
    if not math.isfinite(number):
        raise ValueError(f"{setting.label} should be a finite number")
    if setting.kind == "int":
        if not number.is_integer():
            raise ValueError(f"{setting.label} should be a whole number")
        number = int(number)
    if setting.min_value is not None and number < setting.min_value:
        raise ValueError(f"{setting.label} should be at least {_fmt(setting.min_value)}")
    if setting.max_value is not None and number > setting.max_value:
        raise ValueError(f"{setting.label} should be at most {_fmt(setting.max_value)}")
    return number


def _bad_params(settings: Sequence[Setting]) -> dict[str, str]:
    """``{key: sentence}`` for each query parameter of ``settings`` the widget cannot take."""
    errors = {}
    for setting in settings:
        if setting.key not in st.query_params:
            continue
        raw = st.query_params[setting.key]
        try:
            parse_url_value(setting, raw)
        except ValueError as exc:
            default = "empty (the engine's default)" if setting.default is None else _fmt(setting.default)
            # The reason and the default are the app's own words; only raw came from the user.
            errors[setting.key] = md("The link sets {param!c}, but {why}; the default {default} is "
                                     "used instead.", param=f"{setting.key}={raw}", why=str(exc),
                                     default=default)
    return errors


def _labels_in_url(settings: Sequence[Setting]) -> None:
    """A labelled choice's widget reads and writes its label in the URL (Streamlit serialises
    ``format_func``'s text): a link carrying the option itself (``?map=stable_rank``) sets the
    widget's value before it is drawn."""
    for setting in settings:
        if not setting.labels or setting.key not in st.query_params:
            continue
        raw = st.query_params[setting.key]
        if raw in dict(setting.labels) and setting.key not in st.session_state:
            # the widget cannot read the option from the URL (it looks for the label): give it
            # the value directly; its first run then writes the label to the URL
            st.session_state[setting.key] = raw


def check_url(settings: Sequence[Setting], *, state_key: str) -> list[Markdown]:
    """Check hand-edited query parameters; call once at the top of a page, before its widgets.

    A bound widget would silently drop an invalid value (or, for ``?d_out=2.5``, truncate it),
    so a bad parameter is removed from the URL and the page reruns once: its widget then shows
    the default. The sentences saying so survive the rerun in ``st.session_state[state_key]``
    (e.g. ``"sweep_url_errors"``) and are returned; show them with :func:`show_errors`.
    """
    _labels_in_url(settings)
    bad = _bad_params(settings)
    if bad:
        for key in bad:
            try:
                del st.query_params[key]
            except (KeyError, StreamlitAPIException):  # already gone, or bound this session
                pass
        st.session_state[state_key] = list(bad.values())
        st.rerun()
    return [m for m in st.session_state.pop(state_key, []) if isinstance(m, Markdown)]


def option_labeller(setting: Setting) -> Callable[[Any], str]:
    """The ``format_func`` of a choice widget: an option's label (the option when it has none)."""
    labels = dict(setting.labels)
    return lambda option: labels.get(option, str(option))


def setting_widget(setting: Setting, container: Any = None, *,
                   disabled: str | None = None) -> Any:
    """Draw one URL-bound widget for ``setting`` in ``container`` (default: the main area).

    ``disabled``: a sentence saying why the input does nothing under the other settings; the
    widget is then greyed out (keeping its value) and its help starts with the sentence.
    """
    where = st if container is None else container
    common = dict(key=setting.key, help=setting.help, bind="query-params")
    if disabled:
        common.update(disabled=True, help=f"{disabled} {setting.help}")
    if setting.kind == "int":
        return where.number_input(
            setting.label, min_value=None if setting.min_value is None else int(setting.min_value),
            max_value=None if setting.max_value is None else int(setting.max_value),
            value=setting.default, step=int(setting.step or 1), **common)
    if setting.kind == "float":
        return where.number_input(
            setting.label, min_value=setting.min_value, max_value=setting.max_value,
            value=setting.default, step=setting.step, format=setting.format,
            placeholder=setting.placeholder, **common)
    if setting.kind == "choice":
        index = setting.options.index(setting.default)
        if setting.labels:
            common["format_func"] = option_labeller(setting)
        if setting.select:
            return where.selectbox(setting.label, setting.options, index=index, **common)
        return where.radio(setting.label, setting.options, index=index, horizontal=True, **common)
    return where.text_input(setting.label, value=setting.default,
                            placeholder=setting.placeholder, **common)


def url_settings(settings: Sequence[Setting], *, columns: int = 0,
                 container: Any = None) -> dict[str, Any]:
    """Draw a URL-bound widget for every setting; return their values by key.

    ``columns > 0`` lays the widgets out in that many columns of ``container`` (default: the
    main area). Call :func:`check_url` first, with every setting of the page.
    """
    where = st if container is None else container
    slots = where.columns(columns) if columns > 0 else None
    values = {}
    for i, setting in enumerate(settings):
        values[setting.key] = setting_widget(setting, slots[i % columns] if slots else where)
    return values


# --------------------------------------------------------------------------------------------
# Text that came from a user, on its way to markdown
# --------------------------------------------------------------------------------------------
# Every string a user controls (URL values, file names, tensor names, config strings, notes,
# and the engine's error messages, which quote them) reaches Streamlit's markdown only through
# md(), the one helper, or the escapes it builds on (md_escape, md_code, error_line, md_text):
# a shared link must not render a link, an image, a colour, an icon or maths inside the app's
# own boxes. tests/hostile/test_markdown_sinks.py walks every st.error / warning / info /
# markdown / caption (...) call in pages/ and ui/ and fails on raw text.


class Markdown(str):
    """Text that is safe to render as markdown: the app's own words, with every value from a
    user, a file or a link escaped. Built by :func:`md`, :func:`md_escape`, :func:`md_code`,
    :func:`error_line`, :func:`md_text`, or ``Markdown("literal")`` for the app's own text."""

    __slots__ = ()

    def __add__(self, other: object) -> "Markdown | str":
        out = str.__add__(self, other)  # type: ignore[operator]
        return Markdown(out) if isinstance(other, Markdown) else out

    def join(self, items: Iterable[str]) -> "Markdown | str":  # type: ignore[override]
        """Markdown when every item is (else a plain str: an unescaped item taints it)."""
        items = list(items)
        out = str.join(self, items)
        return Markdown(out) if all(isinstance(i, Markdown) for i in items) else out

#: Longest user text shown in a message; the rest is cut with an ellipsis.
MAX_SHOWN_CHARS = 160
# ASCII punctuation: CommonMark lets a backslash escape every one of them, which also stops
# GFM autolinks (``https\://``, ``www\.``), Streamlit's ``:red[...]`` / ``:material/x:``
# directives, ``$maths$`` and HTML-entity references (``&#96;``).
_MD_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def _clip(text: object, limit: int) -> str:
    out = _CONTROL.sub(" ", str(text))
    return out if len(out) <= limit else out[: max(limit - 1, 0)] + "\u2026"


# GFM autolinks bare URLs and e-mail addresses *after* escapes are resolved (Streamlit's
# remark-gfm works on the text nodes), so backslashes cannot stop them: an invisible
# WORD JOINER splits the triggers (``http:``, ``www.``, ``@``) instead.
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=:)|(?<=http)(?=:)|(?<=ftp)(?=:)|(?<=mailto)(?=:)"
                       r"|(?<=www)(?=\.)|(?=@)")
_JOINER = "\u2060"


def md_escape(text: object, *, limit: int = 2000) -> Markdown:
    """``text`` as literal markdown: every ASCII punctuation backslash-escaped, one line.

    Control characters and line breaks become spaces; longer than ``limit`` characters, the
    text is cut with an ellipsis; bare URLs and addresses are kept from becoming links by an
    invisible word joiner. Use it for whole sentences that quote user values (an engine error
    message); use :func:`md_code` for one value.
    """
    text = _AUTOLINK.sub(_JOINER, _clip(text, limit))
    return Markdown("".join("\\" + ch if ch in _MD_PUNCT else ch for ch in text))


def md_code(text: object, *, limit: int = MAX_SHOWN_CHARS) -> Markdown:
    """``text`` as one markdown code span that no content can close early.

    The fence is one backtick longer than the longest run of backticks inside (CommonMark),
    padded with spaces when the text starts or ends with a backtick; line breaks become
    spaces and more than ``limit`` characters are cut with an ellipsis.
    """
    body = _clip(text, limit)
    if not body.strip():
        return Markdown("(empty)")
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body[0] in "` " or body[-1] in "` " else ""
    return Markdown(f"{fence}{pad}{body}{pad}{fence}")


def md_plain(markdown: str) -> str:
    """What a reader sees of :func:`md_escape`'s output: escapes and word joiners removed.

    For tests and logs that compare messages with the engine's own words.
    """
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace(_JOINER, "")


#: The engine's plain-text notation (kept ASCII for terminals, JSON and CSV) as the pages write
#: it: s·B·A, σᵢ, Σσ² (one notation on every page).
_NOTATION = (
    (re.compile(r"\bs\*\(B@A - B0@A0\)"), "s·(B·A − B0·A0)"),
    (re.compile(r"\bs\*B@A\b"), "s·B·A"),
    (re.compile(r"\bs\*B@\(A\*E\)"), "s·B·(A⊙E)"),
    (re.compile(r"\bs\*(?=kron|\()"), "s·"),
    (re.compile(r"\bB@A\b"), "B·A"),
    (re.compile(r"\bsum sigma\^2\b"), "Σσ²"),
    (re.compile(r"\bsigma\^2\b"), "σ²"),
    (re.compile(r"\bsigma(?= [<>=≤≥])"), "σ"),
    (re.compile(r"\bsigma_i\b"), "σᵢ"),
    (re.compile(r"\bsigma_(\d)\b"), lambda m: "σ" + m.group(1).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))),
    (re.compile(r" <= 1e-6 "), " ≤ 10⁻⁶·"),
    (re.compile(r"\^2\b"), "²"),
    (re.compile(r"<="), "≤"),
    (re.compile(r">="), "≥"),
)


def notation(text: str) -> str:
    """``text`` from the engine in the pages' notation (``s*B@A`` -> ``s·B·A``, ``sigma_1`` ->
    ``σ₁``, ``sum sigma^2`` -> ``Σσ²``)."""
    for pattern, replacement in _NOTATION:
        text = pattern.sub(replacement, text)
    return text


def show_errors(messages: Sequence[Markdown]) -> None:
    """Show each message as one ``st.error`` sentence.

    The messages are markdown written by the app (:func:`md`): user values inside them must
    already be escaped.
    """
    for message in messages:
        st.error(message, icon=":material/error:")


# A code span of the engine's own messages (`ranks`, `true_rank` = 65): only word characters,
# dots, dashes, equals signs and spaces inside, so it stays inert whoever wrote it.
_SAFE_SPAN = re.compile(r"`([\w.=\- ]{1,80})`")


def error_line(exc: BaseException | str) -> Markdown:
    """An engine error as one safe markdown line (it may quote file, tensor and URL values).

    Everything is escaped (:func:`md_escape`) except code spans whose content is plain
    (word characters, ``.``, ``-``, ``=``, spaces), which render as code as the engine meant.
    """
    text = _clip(exc, 2000)
    out, at = [], 0
    for match in _SAFE_SPAN.finditer(text):
        out.append(md_escape(text[at:match.start()]))
        out.append(match.group(0))
        at = match.end()
    out.append(md_escape(text[at:]))
    return Markdown("".join(out))


def md_text(text: object, *, limit: int = 2000) -> Markdown:
    """Prose written by the engine (readings, findings) as markdown: its ``**bold**`` markers
    kept, everything else escaped (a sentence may quote a module or file name)."""
    parts = str(text).split("**")
    if len(parts) % 2 == 0:  # an unpaired marker: keep none
        return md_escape(text, limit=limit)
    return Markdown("**".join(md_escape(part, limit=limit) for part in parts))


def md_param(text: "Markdown | str") -> Markdown:
    """A parameter declared ``Markdown`` (``def header(summary: Markdown)``), as Markdown.

    Its callers pass the app's own literal text or text built by :func:`md` (a plain ``str``
    literal arrives as ``str``): ``tests/hostile/test_markdown_sinks.py`` checks every call site
    of a function with such a parameter, so the value can be trusted here, and only here.
    """
    return text if isinstance(text, Markdown) else Markdown(text)


class _Formatter(string.Formatter):
    """:func:`md`'s formatting: numbers as they format, Markdown as it is, the rest escaped."""

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "c":
            return md_code(value)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markdown):
            if format_spec:
                raise ValueError("md(): a Markdown value takes no format spec")
            return value
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            return format(value, format_spec)  # digits, '.', ',', '-', 'e', '%': inert
        return md_escape(format(value, format_spec))


_FORMATTER = _Formatter()


def md(template: str, /, *args: Any, **kwargs: Any) -> Markdown:
    """The one way to put values into markdown the app shows: ``str.format`` with escaping.

    ``template`` is the app's own markdown (a literal: bold, code spans, lists); every value
    put into it is escaped (:func:`md_escape`) unless it is a number (formatted with its spec:
    ``{n:,}``, ``{x:.3g}``) or already :class:`Markdown`; ``{value!c}`` shows a value as a
    code span (:func:`md_code`).

    >>> md("The link sets {v!c}, but {n:,} modules match", v="x`](https://e.x)", n=1200)  # doctest: +SKIP
    """
    return Markdown(_FORMATTER.vformat(template, args, kwargs))


@contextmanager
def stop_on_error() -> Iterator[None]:
    """Turn an engine error (:class:`LoraRankError`) into one ``st.error`` line and stop the run.

    The message is escaped (:func:`error_line`): it may quote names from an upload.

    >>> with stop_on_error():          # doctest: +SKIP
    ...     result = cached_engine_call(...)
    """
    try:
        yield
    except LoraRankError as exc:
        st.error(error_line(exc), icon=":material/error:")
        st.stop()


# --------------------------------------------------------------------------------------------
# Progress, charts and downloads
# --------------------------------------------------------------------------------------------

class _Whole:
    """A long run done in parts (a rank at a time, each cached on its own), for the bars of
    its parts: which part runs, how much of the whole came before it, the rate so far."""

    def __init__(self, weights: Sequence[float], labels: Sequence[str], item: str) -> None:
        self.weights = [max(float(w), 0.0) for w in weights]
        self.total = sum(self.weights) or 1.0
        self.labels, self.item = list(labels), item
        self.index = 0
        self.first: tuple[float, float] | None = None  # (time, share done) at the first tick

    def share(self, frac: float) -> float:
        return (sum(self.weights[:self.index]) + frac * self.weights[self.index]) / self.total


_WHOLE = threading.local()


def progress_text(text: str, done: int, total: int, *, share: float,
                  part: tuple[str, str, int, int] | None = None, spent: float = 0.0,
                  gained: float = 0.0) -> str:
    """A progress bar's words: ``text``, the count, the part of a whole run (``(label, item,
    index, count)``) with the share of that run done, and the time left once ``spent``
    seconds have done ``gained`` of it (after a second and 1 %)::

        Fitting LoRA at r = 32: optimiser steps (900 of 3,000; rank 2 of 3, 52 % of the run;
        about 40 s left)
    """
    words = [f"{done:,} of {total:,}"]
    if part is not None:
        label, item, index, count = part
        named = "" if label in text else f"{label}, "  # "at r = 32" already says which
        words.append(f"{named}{item} {index + 1} of {count}, {100 * share:.0f} % of the run")
    if share < 1.0 and spent > 1.0 and gained > 0.01:
        words.append(f"{documents.format_seconds(spent / gained * (1.0 - share))} left")
    return f"{text} ({'; '.join(words)})"


@contextmanager
def whole_run(weights: Sequence[float], labels: Sequence[str], *,
              item: str = "rank") -> Iterator[Callable[[int], None]]:
    """Mark a long run made of parts (each with its own :func:`progress_bar`, e.g. one cached
    fit per rank): inside, every bar also says which part runs, how much of the whole run is
    done and the time left. ``weights``: each part's estimated work; ``labels``: its name
    (``"r = 4"``). Call the yielded ``part(i)`` before running part ``i``::

        with whole_run(costs, [f"r = {r}" for r in ranks]) as part:
            for i, r in enumerate(ranks):
                part(i)
                fit_one_rank(r)  # cached: a hit shows no bar and takes no time
    """
    whole = _Whole(weights, labels, item)

    def part(index: int) -> None:
        whole.index = index

    previous = getattr(_WHOLE, "current", None)
    _WHOLE.current = whole
    try:
        yield part
    finally:
        _WHOLE.current = previous


@contextmanager
def progress_bar(text: str, *, min_interval: float = 0.1) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for the engine's ``progress(done, total)`` callback, removed when done.

    Use it *inside* an ``st.cache_data`` function so the bar is created and emptied there:
    a cache hit then replays nothing visible and a miss shows the bar while it works::

        @st.cache_data(show_spinner=False)
        def run(...):
            with progress_bar("Fitting") as progress:
                return fit_lora(..., progress=progress)

    The bar shows the count, and once the rate is known the time left; inside
    :func:`whole_run` it fills with the whole run's progress and also names the part that runs
    ("r = 4, rank 2 of 3"). Updates closer than ``min_interval`` seconds apart are skipped (the
    final one is not). Every tick also checks that the browser session is still there: work
    for a closed tab stops (:func:`ui.guard.check_alive`).
    """
    from .guard import check_alive

    bar = st.progress(0.0, text=text)
    last = [-math.inf]
    whole = getattr(_WHOLE, "current", None)
    began: list[tuple[float, float] | None] = [None]  # (time, share) at this bar's first tick

    def update(done: int, total: int) -> None:
        check_alive()
        frac = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        now = time.perf_counter()
        if frac < 1.0 and now - last[0] < min_interval:
            return
        last[0] = now
        share = whole.share(frac) if whole is not None else frac
        if whole is not None and whole.first is None:
            whole.first = (now, share)
        first = whole.first if whole is not None else began[0]
        if first is None:
            began[0] = first = (now, share)
        part = None
        if whole is not None and len(whole.weights) > 1:
            part = (whole.labels[whole.index], whole.item, whole.index, len(whole.weights))
        bar.progress(share, text=progress_text(text, done, total, share=share, part=part,
                                               spent=now - first[0], gained=share - first[1]))

    try:
        yield update
    finally:
        bar.empty()


def chart_spec(chart: Any) -> dict:
    """The Vega-Lite dict of an Altair chart, ready to cache and to pass to :func:`show_chart`.

    Building and validating an Altair chart costs tens of milliseconds per rerun (and loading
    the Vega-Lite schema ~0.1 s on a cold server); a cached function can return this dict
    instead. Validation is skipped here: the builders' tests (``tests/test_charts_*.py``)
    validate every chart they build. The default Altair theme's 300 x 300 view size is
    dropped, as ``st.altair_chart`` does, so the chart fills its container.
    """
    spec = chart.to_dict(validate=False)
    view = spec.get("config", {}).get("view", {})
    for key in ("continuousWidth", "continuousHeight"):
        view.pop(key, None)
    if "config" in spec and not view:
        spec["config"].pop("view", None)
        if not spec["config"]:
            del spec["config"]
    return spec


def show_chart(chart: Any, *, caption: Markdown | None = None) -> None:
    """Render a chart full width: an Altair chart from ``lorarank.charts`` or its
    :func:`chart_spec` dict (e.g. from a cached function)."""
    if isinstance(chart, dict):
        st.vega_lite_chart(spec=chart, width="stretch")
    else:
        st.altair_chart(chart, width="stretch")
    if caption:
        st.caption(md_param(caption))


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                   right: Sequence[str] = ()) -> Markdown:
    """``rows`` as a markdown table (every header and cell escaped; ``right``: columns aligned
    right). A page's first table: it draws with the page's text, where ``st.dataframe`` first
    loads and compiles the data grid's and Arrow's scripts (~0.7 s for a new visitor here,
    ``benchmarks/bench_app.py``); for a few rows nobody needs to sort or scroll."""
    header = Markdown(" | ").join(md_escape(c) for c in columns)
    rule = Markdown(" | ").join(Markdown("---:") if c in right else Markdown("---") for c in columns)
    body = Markdown("\n").join(
        md("| {} |", Markdown(" | ").join(md_escape("-" if row.get(c) is None else row.get(c), limit=400)
                                        for c in columns))
        for row in rows)
    return md("| {} |\n| {} |\n{}", header, rule, body)


def dash_missing(frame: "pd.DataFrame", columns: Sequence[str], *,
                 digits: int = 4) -> "pd.DataFrame":
    """``frame`` with each of ``columns`` that holds a missing value (None, NaN) as text: its
    numbers to ``digits`` significant digits, "-" where missing. A data frame writes a missing
    number as a literal "None"; draw the columns with :func:`number_column`."""
    out = frame.copy()
    for name in columns:
        if name in out and out[name].isna().any():
            out[name] = ["-" if v is None or v != v else f"{v:.{digits}g}" for v in out[name]]
    return out


def number_column(frame: "pd.DataFrame", name: str, *, help: str, format: str = "%.4g") -> Any:
    """The column config of a number column: formatted while it holds numbers, as text once
    :func:`dash_missing` wrote it out."""
    from pandas.api.types import is_numeric_dtype

    if name in frame and not is_numeric_dtype(frame[name]):
        return st.column_config.TextColumn(name, help=help)
    return st.column_config.NumberColumn(name, help=help, format=format)


def table_height(rows: int, *, max_rows: int | None = None) -> int:
    """Pixel height of an ``st.dataframe`` showing ``rows`` rows (at most ``max_rows``; None:
    all of them) without a scroll bar: Streamlit's default box shows about ten."""
    shown = rows if max_rows is None else min(rows, max_rows)
    return 38 + 35 * max(1, shown)


def parse_ranks(text: str, *, max_count: int, example: str = "2,4,16") -> tuple[int, ...]:
    """``"2, 4,16"`` -> ``(2, 4, 16)``; ConfigError naming the bad entry otherwise."""
    return parse_numbers(text, name="ranks", whole=True, low=1, item="rank", example=example,
                         max_count=max_count, too_many=f"ranks; the app fits at most {max_count}")


def frame_csv(frame: "pd.DataFrame") -> bytes:
    """A table's CSV download (UTF-8), written by :func:`lorarank.documents.csv_text`."""
    rows = frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None)
    return documents.csv_text(rows, columns=[str(c) for c in frame.columns]).encode("utf-8")


def download_buttons(frame: "pd.DataFrame | None" = None, *, stem: str, key: str,
                     json_data: Any = None, csv_bytes: bytes | None = None,
                     json_bytes: bytes | None = None) -> None:
    """CSV and JSON download buttons for a table, side by side.

    Parameters
    ----------
    frame : DataFrame, optional
        Written as CSV (no index), unless ``csv_bytes`` is given.
    stem : str
        File name without extension (``lorarank-sweep`` gives ``lorarank-sweep.csv``).
    key : str
        Prefix of the two buttons' keys (``<key>_csv``, ``<key>_json``), e.g. ``"sweep_dl"``.
    json_data : JSON-friendly object, optional
        The JSON document; default: the table's records.
    csv_bytes, json_bytes : bytes, optional
        The files already serialised (e.g. by a cached function): a rerun then serialises
        nothing.
    """
    if csv_bytes is None:
        csv_bytes = frame_csv(frame)
    if json_bytes is None:
        if json_data is None:
            json_data = json.loads(frame.to_json(orient="records"))
        json_bytes = documents.json_bytes(json_data)
    left, right, _ = st.columns([1, 1, 4])
    left.download_button("Download CSV", csv_bytes, file_name=f"{stem}.csv", mime="text/csv",
                         key=f"{key}_csv", on_click="ignore", icon=":material/download:")
    right.download_button("Download JSON", json_bytes, file_name=f"{stem}.json",
                          mime="application/json", key=f"{key}_json", on_click="ignore",
                          icon=":material/download:")
