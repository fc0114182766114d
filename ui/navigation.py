"""The page registry: every page of the app, registered once.

A page is a script in ``pages/`` (the number in its name sets its place, as Streamlit's
auto-discovery orders it) plus one :class:`PageInfo` in :data:`PAGES`. Everything else reads
the registry:

- the sidebar and the home page link to every page (:func:`available_pages`);
- the page script calls ``common.setup_page(__file__)``, which takes its title and icon from here;
- session-state keys starting with a page's ``state_prefix`` survive a switch to another page
  (:data:`STATE_PREFIXES`; other keys are URL-bound settings, dropped on a switch);
- the server imports each page's ``modules`` as it starts (:func:`preload_modules`, read by
  :mod:`ui.preload`), so a first visit does not wait for them.

Adding a page: write ``pages/<N>_<Name>.py`` and add its :class:`PageInfo` below.
``tests/test_navigation.py`` checks that every script in ``pages/`` is registered and the other
way round. This module imports nothing from Streamlit (the server's warm-up reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "PageInfo", "PAGES", "STATE_PREFIXES", "available_pages", "page_for",
           "preload_modules"]

#: The repository root (the folder of ``app.py``).
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PageInfo:
    """One page: its script, navigation label and icon, the question it answers, and what the
    app needs to know about it.

    Attributes
    ----------
    path : str
        The script, relative to the repository root (``pages/1_Rank_sweep.py``).
    label : str
        Readable navigation label, also the page's title.
    icon : str
        A Material icon (``":material/tune:"``).
    question : str
        What the page answers, one or two sentences (the home page lists them).
    state_prefix : str
        Prefix of the page's own session-state keys (``"sweep_"``): kept across page switches.
    modules : tuple of str
        The ``ui`` (and engine) modules the page imports, for the server's warm-up.
    """

    path: str
    label: str
    icon: str
    question: str
    state_prefix: str = ""
    modules: tuple[str, ...] = ()

    @property
    def url_path(self) -> str:
        """The page's address on the server: ``/`` for the home page, else the script's name
        without its number (``pages/3_Adapter_audit.py``: ``/Adapter_audit``), as Streamlit's
        page discovery names it."""
        if self.path == "app.py":
            return "/"
        return "/" + Path(self.path).stem.split("_", 1)[-1]


#: Every page of the app, in navigation order. A page whose file does not exist yet is skipped
#: by :func:`available_pages`, so the home page and the sidebar never link to a missing file.
PAGES: tuple[PageInfo, ...] = (
    PageInfo("app.py", "Home", ":material/home:", "What lorarank answers, and the LoRA formula.",
             modules=("ui.home",)),
    PageInfo("pages/1_Rank_sweep.py", "Rank sweep", ":material/stacked_line_chart:",
             "What rank does a task of intrinsic rank k need? Fit LoRA at several r on a synthetic "
             "update and see which directions each r learns.",
             state_prefix="sweep_", modules=("ui.sweep", "ui.datamode")),
    PageInfo("pages/2_Alpha_r_stability.py", "alpha/r stability", ":material/tune:",
             "Raising r made training worse: is it capacity or the alpha/r scaling? Final error "
             "over rank and learning rate for each scaling rule.",
             state_prefix="stability_", modules=("ui.stability", "ui.datamode")),
    PageInfo("pages/3_Adapter_audit.py", "Adapter audit", ":material/fact_check:",
             "How many directions does my trained adapter really use, can I shrink it without "
             "retraining, and do two adapters learn the same thing?",
             state_prefix="audit_", modules=("ui.audit", "ui.hub", "ui.loaded", "ui.series",
                                                 "ui.examples")),
    PageInfo("pages/4_Fleet.py", "Fleet", ":material/dataset:",
             "Which of our many adapters fit the server's max_lora_rank, what does shrinking the "
             "rest cost, and what cap should we set?",
             state_prefix="fleet_", modules=("ui.fleet",)),
    PageInfo("pages/5_Glossary.py", "Glossary", ":material/menu_book:",
             "What do stable rank, Eckart-Young, Gavish-Donoho, phi or intruder dimensions mean? "
             "Every term of the pages in plain words, with its formula and source.",
             state_prefix="glossary_", modules=("ui.glossary",)),
)

#: Prefixes of session-state keys that are not URL-bound settings (kept across pages): the app's
#: own (``lorarank_``) and every page's.
STATE_PREFIXES: tuple[str, ...] = ("lorarank_",) + tuple(p.state_prefix for p in PAGES
                                                         if p.state_prefix)


def available_pages() -> list[PageInfo]:
    """The entries of :data:`PAGES` whose script exists, in order."""
    return [page for page in PAGES if (ROOT / page.path).is_file()]


def page_for(script: str) -> PageInfo | None:
    """The registered page of a script path (``__file__`` of a page) or label, else None."""
    for page in PAGES:
        if script == page.label:
            return page
    try:
        path = Path(script).resolve()
    except (OSError, ValueError):
        return None
    for page in PAGES:
        if path == (ROOT / page.path).resolve():
            return page
    return None


def preload_modules() -> tuple[str, ...]:
    """Every page's modules, each once, in navigation order."""
    return tuple(dict.fromkeys(m for page in PAGES for m in page.modules))
