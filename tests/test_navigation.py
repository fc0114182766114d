"""ui.navigation: a page is registered once, and everything else reads the registry."""

from __future__ import annotations

import re

from ui import preload
from ui.navigation import PAGES, ROOT, STATE_PREFIXES, page_for


class TestRegistry:
    def test_every_page_script_is_registered(self):
        """Every script in pages/ has an entry, and every entry (but Home) is a script there."""
        scripts = {f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py")}
        assert scripts == {p.path for p in PAGES if p.path != "app.py"}

    def test_pages_take_title_and_icon_from_the_registry(self):
        """Each page script sets itself up by its own path, and titles itself with its label."""
        for page in PAGES[1:]:
            text = (ROOT / page.path).read_text()
            assert "common.setup_page(__file__)" in text, page.path
            assert re.search(r"layout\.header\(\s*[^,]*\bpage\.label\b", text), page.path
            assert page_for(str(ROOT / page.path)) is page and page_for(page.label) is page

    def test_server_warm_up_and_state_read_the_registry(self):
        """The warm-up imports every page's modules; every page's state prefix is kept."""
        for page in PAGES:
            assert set(page.modules) <= set(preload.MODULES), page.path
            assert not page.state_prefix or page.state_prefix in STATE_PREFIXES
        assert len({p.state_prefix for p in PAGES[1:]}) == len(PAGES) - 1  # one prefix each
