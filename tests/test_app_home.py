"""The home page and the navigation, run headless with Streamlit's AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.navigation import PAGES, available_pages

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 60


class TestHome:
    """The home page."""

    def test_runs_without_exception(self):
        """The home page renders with no exception and no error."""
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        assert not at.exception
        assert not at.error
        assert at.title[0].value == "lorarank"

    def test_shows_formula_and_scaling_conventions(self):
        """The LoRA formula and the four scaling conventions are on the page."""
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        text = " ".join(m.value for m in at.markdown)
        assert "*h* = *W x* + *s* · *B A x*" in text
        assert not at.latex  # plain text: KaTeX would cost a new visitor its script and fonts
        for convention in ("lora_alpha / r", "lora_alpha / sqrt(r)", "kohya", "mlx-lm"):
            assert convention in text

    def test_links_every_existing_page_in_body_and_sidebar(self):
        """Each existing page gets a readable link in the body and in the sidebar."""
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        expected = [(p.label, p.path.removeprefix("pages/").removesuffix(".py").split("_", 1)[-1])
                    for p in available_pages()[1:]]
        sidebar = [(el.proto.label, el.proto.page) for el in at.sidebar.get("page_link")]
        body = [(el.proto.label, el.proto.page) for el in at.main.get("page_link")]
        assert sidebar == [("Home", "")] + expected
        assert body == expected
        assert not any("_" in label for label, _ in sidebar)

    def test_missing_pages_are_not_linked(self):
        """A page whose file is absent is left out rather than erroring."""
        present = {p.path for p in available_pages()}
        assert present == {p.path for p in PAGES if (ROOT / p.path).is_file()}
        assert "app.py" in present and "pages/1_Rank_sweep.py" in present


class TestNavigation:
    """Every linked page opens from the home page."""

    @pytest.mark.parametrize("path", [p.path for p in available_pages()[1:]])
    def test_linked_page_runs(self, path):
        """Switching to a linked page runs it without exception."""
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        at.switch_page(path).run()
        assert not at.exception


class TestServerStart:
    """``streamlit run app.py`` serves ``app`` (an ``st.App``) whose lifespan preloads imports."""

    def test_streamlit_run_finds_the_st_app(self):
        """Streamlit's own discovery sees ``app = st.App(...)``, so ``streamlit run`` uses it
        (and its lifespan) rather than running app.py as a plain script."""
        from streamlit.web.server.app_discovery import discover_asgi_app

        found = discover_asgi_app(ROOT / "app.py")
        assert found.is_asgi_app and found.import_string == "app:app"

    def test_preload_names_only_importable_modules(self):
        """Every module the server preloads exists (preload() only logs a failed import, so a
        renamed module would silently stop being preloaded)."""
        import importlib.util

        from ui.preload import MODULES

        missing = [name for name in MODULES if importlib.util.find_spec(name) is None]
        assert missing == []

    @pytest.mark.parametrize("setting, starts", [(None, True), ("0", False)])
    def test_lifespan_starts_the_preload_unless_turned_off(self, setting, starts, monkeypatch, caplog,
                                                          run_async):
        """The lifespan runs the preload in its thread at server start (it logs what it
        imported); LORARANK_PRELOAD=0 (the benchmark's comparison) turns it off."""
        import threading

        from ui import preload

        if setting is None:
            monkeypatch.delenv("LORARANK_PRELOAD", raising=False)
        else:
            monkeypatch.setenv("LORARANK_PRELOAD", setting)
        caplog.set_level("INFO", logger="ui.preload")
        monkeypatch.setattr(preload, "MODULES", ("json", "lorarank.errors"))  # the real list: above

        async def serve() -> None:
            async with preload.lifespan(None):
                pass

        run_async(serve())
        for thread in threading.enumerate():
            if thread.name == "lorarank-preload":
                thread.join(60)
        done = [r for r in caplog.records if r.name == "ui.preload" and "modules imported" in r.message]
        assert len(done) == (1 if starts else 0)
        assert not [r for r in caplog.records if r.name == "ui.preload" and r.levelname == "WARNING"]


def test_warm_up_yields_to_a_visit(monkeypatch):
    """A page run that starts holds the warm-up back YIELD_SECONDS (its own imports first);
    with no visit it goes on at once."""
    from ui import preload

    now = [100.0]
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    idle = lambda: False  # noqa: E731 - no page is running
    monkeypatch.setattr(preload, "_LAST_VISIT", [float("-inf")])
    assert preload.wait_for_quiet(clock=lambda: now[0], sleep=sleep, running=idle) == 0 and waits == []
    monkeypatch.setattr(preload, "_LAST_VISIT", [now[0] - 0.5])  # a page started 0.5 s ago
    waited = preload.wait_for_quiet(clock=lambda: now[0], sleep=sleep, running=idle)
    assert preload.YIELD_SECONDS - 0.5 <= waited < preload.YIELD_SECONDS - 0.5 + 0.06


def test_warm_up_waits_for_running_pages(monkeypatch):
    """While a page's script runs (however long ago it started), the warm-up starts no import;
    it goes on YIELD_SECONDS after the run ended. Streamlit runs scripts in threads named
    ScriptRunner.scriptThread: an AppTest run is one, seen while it runs."""
    from streamlit.testing.v1 import AppTest

    from ui import preload

    now = [100.0]
    runs = iter([True] * 40 + [False] * 1000)  # a run of 2 s (40 polls of 0.05 s), then idle

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(preload, "_LAST_VISIT", [now[0] - 60])  # it started long ago
    waited = preload.wait_for_quiet(clock=lambda: now[0], sleep=sleep, running=lambda: next(runs))
    assert 2.0 + preload.YIELD_SECONDS - 0.06 <= waited <= 2.0 + preload.YIELD_SECONDS + 0.06

    script = ("import streamlit as st\nfrom ui import preload\n"
              "st.session_state['running'] = preload.pages_running()\n")
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert not at.exception and at.session_state["running"] is True
