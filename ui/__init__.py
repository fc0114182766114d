"""Streamlit-only helpers the pages import (the engine, ``lorarank``, never imports these).

Arrows point one way: ``pages/*.py -> ui -> lorarank``. A page reads widgets, calls the engine
through a cached wrapper of its ``ui/<page>.py`` module, and renders.

Modules
-------
``ui.common`` (shared by every page)
    - ``setup_page(title)``: tab title, wide layout and the shared sidebar (call first).
    - ``PAGES`` / ``available_pages()``: the navigation (readable labels, one-line question);
      the home page and the sidebar link only pages whose file exists.
    - ``Setting(key, label, default, help, kind=..., min_value=..., ...)``: a URL-bound input.
      Its ``key`` is the widget key, the session-state key and the query-parameter name.
    - ``check_url(all_settings, state_key="<page>_url_errors") -> list[str]``: call once at
      the top of the page, before any widget. A hand-edited bad value (``?true_rank=-3``,
      ``?true_rank=abc``) is removed from the URL and the page reruns once, so the widget shows
      its default; returns one sentence per bad value for ``show_errors``.
    - ``url_settings(settings, columns=3) -> values``: draws the URL-bound widgets
      (``bind="query-params"``, key = query parameter) and returns their values by key.
    - ``stop_on_error()``: context manager turning a ``LoraRankError`` into one ``st.error``
      line and ``st.stop()``.
    - ``progress_bar(text)``: context manager yielding a ``progress(done, total)`` callback for
      the engine; use it inside the ``st.cache_data`` function (a cache hit replays nothing).
    - ``show_chart(chart)``: render an Altair chart from ``lorarank.charts`` full width, or
      the dict ``chart_spec(chart)`` made of it: return that dict from an ``st.cache_data``
      function to skip rebuilding and validating the chart on every rerun.
    - ``download_buttons(frame, stem=..., key=..., json_data=...)``: CSV and JSON downloads.
``ui.home``
    ``render()``: the home page, drawn by ``app.py`` on each visit.
``ui.preload``
    ``lifespan``: the ``st.App`` lifespan of ``app.py``; it imports the pages' heavy modules
    (pandas, Altair, the engine, ``ui.*``) in a daemon thread while no page runs (it yields to
    every visitor, the first one included), so the pages visited next do not wait for them.
``ui.serving``
    ``lifespan`` and ``middleware()`` of ``app.py``'s ``st.App``: TCP_NODELAY on the server's
    socket (stock Streamlit leaves Nagle's algorithm on: ~40 ms per small file of the front end
    on a kept-alive connection), then the warm-up's lifespan; a page link's index page names the
    app's base address, so the front end's first health probe is the right one.
``ui.auth``
    ``require_login()`` (called by ``setup_page``): a sign-in screen when the secrets configure
    ``st.login`` (``[auth]``), else nothing.
``ui.hub`` (Adapter audit)
    ``hub_input(HubInput(""|"_b"))``: the Hub field and the ``?hf=`` link of one adapter slot;
    returns an ``Upload`` and pins the link's ``revision`` to the resolved commit.
``ui.loaded`` (Adapter audit)
    The loaded adapter: ``take(uploaded)`` moves dropped files into it (new weights replace
    it, a config alone joins it) and resets the uploader; ``header_row`` / ``adapter_name``
    name it with a Clear button.
``ui.report``
    ``audit_button`` / ``sweep_button`` / ``stability_button``: "Download report (HTML)",
    built by ``lorarank.report`` when clicked.
``ui.sweep`` (Rank sweep), ``ui.stability`` (alpha/r stability), ``ui.audit`` (Adapter audit)
    Each page's settings (``SETTINGS``), cached engine wrappers (``@st.cache_data`` taking
    small hashable inputs: a frozen config dataclass, the upload's bytes), table builders and
    text read off the numbers.
``ui.series`` (the Adapter audit's "Rank over training" section)
    ``section(rule=..., value=...)`` draws the whole section (its own uploader, URL-bound
    ``series_*`` settings, cached :func:`lorarank.series.audit_series`, table, downloads and
    charts); an error in it ends the section, not the page.

Keys
----
URL-bound widget keys are bare readable names (the CLI option with underscores: ``d_out``,
``true_rank``); they must be unique within a page. Every other session-state key is a constant
in the page's module, prefixed with the page (``sweep_``, ``stability_``, ``audit_``). Store
inputs in session state, never derived arrays: the cache holds those.

A page in full
--------------
::

    import streamlit as st
    from ui import common, sweep

    common.setup_page("Rank sweep")
    st.title("Rank sweep")
    common.show_errors(common.check_url(sweep.SETTINGS, state_key=sweep.URL_ERRORS_KEY))
    values = common.url_settings(sweep.SETTINGS, columns=4)
    with common.stop_on_error():
        run = sweep.run_sweep(sweep.SweepConfig.from_values(values))
    st.dataframe(sweep.results_table(run), hide_index=True)
    common.download_buttons(sweep.results_records(run), stem="lorarank-sweep",
                            key=sweep.DOWNLOAD_KEY, json_data=sweep.results_json(run))
"""
