"""Page structure every page shares: a short header, settings in the sidebar, tabbed sections.

The layout is results first. A page's run-wide inputs live in the sidebar (:func:`settings_group`),
which Streamlit shows beside the results on a wide screen and folds away on a phone, so the first
thing under the title is always a result. Inputs that change one view only (the rank map's metric,
the calculator, the compare uploader) sit at the top of that view's tab (:func:`sections`).

Adding a section to a page: put its name in the page's ``sections([...])`` list and write into
``tabs["name"]`` with a ``with`` block; a section's widgets belong inside it, before any result,
and its charts and tables under ``if is_open(tabs["name"])`` (only the open tab draws them).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import streamlit as st

from ui.common import Markdown, Setting, md, md_param, setting_widget
from ui.common import copy_link as common_copy_link
from ui.glossary import term_links

__all__ = ["header", "settings_group", "sections", "opening", "opened", "is_open", "show_panels",
           "SETTINGS_HINT", "TAB_PARAM"]

#: Said under the title of a page whose inputs are in the sidebar.
SETTINGS_HINT = ("Settings are in the sidebar (on a phone, open it with the » button at the top "
                 "left); every setting is kept in the link.")


def header(title: Markdown, summary: Markdown, *, about: Markdown | None = None,
           hint: Markdown | None = SETTINGS_HINT, terms: tuple[str, ...] = ()) -> None:
    """The page title, a one-sentence summary, and the longer explanation folded away.

    Parameters
    ----------
    title : str
        The page's heading (the same as its navigation label).
    summary : str
        One sentence: what the page shows.
    about : str, optional
        Markdown with the background; shown in a collapsed expander "About this page".
    hint : str, optional
        A caption after the summary (default: where the settings are).
    terms : tuple of str
        Glossary terms the page uses (:data:`ui.glossary.TERMS` names): linked under the
        explanation, each opening the Glossary at that term.
    """
    st.title(md_param(title))
    st.caption(md_param(summary) + (Markdown(" ") + md_param(hint) if hint else Markdown("")))
    # "About this page" and "Copy link" share a row (on a phone too: no extra line before the
    # first result)
    row = st.container(horizontal=True, vertical_alignment="top", gap="small")
    if about or terms:
        with row.expander("About this page", icon=":material/info:"):
            if about:
                st.markdown(md_param(about))
            if terms:
                st.markdown(Markdown("**Terms** (in the Glossary): ") + term_links(terms))
    common_copy_link(row)


def _is_compact(setting: Setting) -> bool:
    """Numbers fit two to a sidebar row; choices and free text take the whole row."""
    return setting.kind in ("int", "float")


def settings_group(title: Markdown, settings: Sequence[Setting], *, container: Any = None,
                   expanded: bool = True,
                   disabled: Mapping[str, Callable[[dict[str, Any]], str | None]] | None = None,
                   ) -> dict[str, Any]:
    """Draw the URL-bound widgets of ``settings`` in a sidebar expander titled ``title``.

    Numbers go two to a row, choices and text fields one to a row, in the order given. Returns
    the values by key, as :func:`ui.common.url_settings` does. ``container`` (e.g. an expander
    already holding other widgets) is used instead of a new expander when given.
    ``disabled`` maps a setting's key to a function of the values drawn before it, returning
    the sentence why that input does nothing now (it is then greyed out) or None.
    """
    disabled = dict(disabled or {})

    def why(setting: Setting) -> str | None:
        rule = disabled.get(setting.key)
        return rule(values) if rule is not None else None

    box = st.sidebar.expander(md_param(title), expanded=expanded) if container is None else container
    values: dict[str, Any] = {}
    pending: list[Setting] = []

    def flush() -> None:
        if not pending:
            return
        cols = box.columns(2)
        for i, setting in enumerate(pending):
            values[setting.key] = setting_widget(setting, cols[i], disabled=why(setting))
        pending.clear()

    for setting in settings:
        if _is_compact(setting):
            pending.append(setting)
            if len(pending) == 2:
                flush()
        else:
            flush()
            values[setting.key] = setting_widget(setting, box, disabled=why(setting))
    flush()
    return values


#: The query parameter naming the open tab (``?tab=Loss+curves``); absent for the default tab.
TAB_PARAM = "tab"


def sections(names: Sequence[str], *, default: str | None = None) -> dict[str, Any]:
    """Tabs a user can jump between, by name: ``tabs = sections(["Grid", "Loss curves"])``.

    The tabs know which one is open: switching tabs reruns the page, and the URL names the open
    tab (``?tab=Loss+curves``), so a link opens the view it was copied from. Every tab's widgets
    are drawn on every run (a widget in a tab the user is not looking at keeps its value and its
    place in the URL); its charts and tables only when it is open (:func:`is_open`), so a page's
    first render draws one section, not all of them. Write into one with ``with tabs["Grid"]:``.
    ``default`` names the tab shown first (e.g. the one a link's settings belong to); None: the
    first. A link naming no tab of the page opens the default (Streamlit drops the parameter).
    """
    return dict(zip(names, st.tabs(list(names), default=default, key=TAB_PARAM,
                                   bind="query-params")))


def opening(names: Sequence[str], *, default: str | None = None) -> str:
    """The tab :func:`sections` will open on this run, known before it is drawn (a page may
    lay out what comes above the tabs for it): the one last clicked, else the one the link
    names, else ``default`` (else the first)."""
    for value in (st.session_state.get(TAB_PARAM), st.query_params.get(TAB_PARAM)):
        if value in names:
            return str(value)
    return default if default is not None else names[0]


def opened(names: Sequence[str], *, default: str | None = None, key: str) -> set[str]:
    """The tabs opened so far in this session, this run's (:func:`opening`) included; kept in
    session state under ``key`` (a key of the page's own prefix).

    A section whose inputs are many (an uploader, the Hub fields, switches) may draw them only
    once its tab has been opened: every widget of every tab is drawn in the browser on a first
    visit, each kind loading its own scripts before the page's first result shows (Adapter
    audit, ``benchmarks/bench_app.py``). Once opened, a section is drawn on every run, so what
    its widgets hold (a file, a setting in the link) stays while another tab is open.
    """
    seen = st.session_state.get(key)
    if not isinstance(seen, set):
        seen = set()
    seen.add(opening(names, default=default))
    st.session_state[key] = seen
    return seen


def is_open(tab: Any) -> bool:
    """Whether ``tab`` (from :func:`sections`) is the open one: draw its charts and tables."""
    return tab.open is not False  # None: tabs that do not track state show everything


def show_panels(spec: dict, *, columns: int = 3, caption: Markdown | None = None,
                legend: bool = True) -> None:
    """Draw a faceted chart as a grid of panels that follows the page's width.

    Each facet panel becomes its own chart filling a Streamlit column (shared axes and colours,
    see :func:`lorarank.charts.split_facets`); a row holds at most ``columns`` panels, and on a
    phone the columns stack. A row left short keeps empty space, not an empty panel.
    ``legend=False`` drops the per-panel legends: then the caption must say what the colours
    mean.
    """
    from lorarank.charts import split_facets  # Altair loads with the first chart, not before

    title, panels = split_facets(spec, legend=legend)
    if title:
        st.markdown(md("**{}**", title))
    per_row = max(1, min(columns, len(panels)))
    for start in range(0, len(panels), per_row):
        cols = st.columns(per_row)
        for col, panel in zip(cols, panels[start:start + per_row]):
            col.vega_lite_chart(spec=panel, width="stretch")
    if caption:
        st.caption(md_param(caption))
