"""The adapter the Adapter audit page has loaded: replacing it, clearing it, naming it.

A file uploader with ``accept_multiple_files`` only ever adds: dropping another adapter onto it
gave "several weights files given" until each old file was removed by hand, and its chips cut
names to ``ada…el.safetensors``. Here the uploader is only a way in. Files dropped on it are
taken into the page's *loaded* adapter (session state, the same bytes objects, no copy) and the
uploader is reset by bumping its key, so it is empty again and ready for the next drop:

* files with a weights file **replace** the loaded adapter (a new adapter is what a user who
  drops one means);
* config files alone (``adapter_config.json``) **join** a loaded weights file that has no
  config (PEFT and mlx-lm users may pick the two files one after the other);
* **Clear** forgets the loaded adapter.

The header line names what is loaded: the weights file, the base model the config names, the
format and family, the ranks.

Results first: once an adapter is shown (files loaded, a Hub link, or the demo), the inputs
that bring another one (uploader, Hub field, base weights) fold into one collapsed expander
under that line (:func:`inputs_box`), so the reading and the tabs follow the title directly.
"""

from __future__ import annotations

from typing import Any, Sequence

import streamlit as st

from .audit import DEMO_KEY, UPLOAD_KEY, Detected, Upload
from .common import Markdown, md, md_code, md_param

__all__ = ["LOADED_KEY", "GENERATION_KEY", "CLEAR_KEY", "uploader_key", "combine", "take",
           "loaded", "clear", "unreadable", "show_unreadable", "UNREADABLE_KEY", "adapter_name", "header_row", "showing", "inputs_box",
           "inputs_label"]

#: Session-state key of the loaded :class:`ui.audit.Upload`.
LOADED_KEY = "audit_loaded"
#: Session-state key of the uploader's generation (its key's suffix).
GENERATION_KEY = "audit_upload_generation"
#: Widget key of the Clear button.
CLEAR_KEY = "audit_clear"


def uploader_key() -> str:
    """The uploader's widget key now: :data:`ui.audit.UPLOAD_KEY`, then ``..._1``, ``..._2``."""
    generation = int(st.session_state.get(GENERATION_KEY, 0))
    return UPLOAD_KEY if generation == 0 else f"{UPLOAD_KEY}_{generation}"


def _is_config(name: str) -> bool:
    return name.lower().endswith(".json")


def combine(current: Upload | None, new: Upload) -> Upload:
    """What dropping ``new`` onto the page means while ``current`` is loaded.

    Config files alone join a loaded set that has no config; anything with a weights file
    replaces the loaded set. Identities are concatenated, so caches stay keyed by file ids.
    """
    names = [name for name, _ in new.files]
    if (current is not None and names and all(_is_config(n) for n in names)
            and not any(_is_config(n) for n, _ in current.files)):
        return Upload(current.files + new.files, f"{current.ident}+{new.ident}",
                      f"{current.label} + {new.label}")
    return new


def loaded() -> Upload | None:
    """The loaded adapter, or None."""
    return st.session_state.get(LOADED_KEY)


def take(uploaded: Sequence[Any] | None) -> Upload | None:
    """Move the uploader's files (if any) into the loaded adapter, reset the uploader and
    rerun; return the loaded adapter. Call right after drawing the uploader."""
    new = Upload.from_uploaded(uploaded)
    if new is None:
        return loaded()
    st.session_state[PREVIOUS_KEY] = loaded()  # kept if the new files cannot be read
    st.session_state[LOADED_KEY] = combine(loaded(), new)
    st.session_state[GENERATION_KEY] = int(st.session_state.get(GENERATION_KEY, 0)) + 1
    st.rerun()
    return None  # pragma: no cover - st.rerun does not return


def clear() -> None:
    """Forget the loaded adapter and reset the uploader (the Clear button's callback)."""
    st.session_state.pop(LOADED_KEY, None)
    st.session_state.pop(PREVIOUS_KEY, None)
    st.session_state[GENERATION_KEY] = int(st.session_state.get(GENERATION_KEY, 0)) + 1


#: Session-state key of the error line about files that could not be read (across one rerun).
UNREADABLE_KEY = "audit_unreadable"
#: Session-state key of the adapter loaded before the last drop.
PREVIOUS_KEY = "audit_loaded_previous"


def unreadable(upload: Upload, message: Markdown, where: Any) -> None:
    """``upload`` could not be read: show ``message`` (one safe markdown line) and stop.

    Dropped files are then no longer the loaded adapter: the page reruns with the adapter
    loaded before them (if any; else none, its uploader open again) and the message above it
    (:func:`show_unreadable`). A demo or Hub upload (not loaded files) just shows the message.
    """
    current = loaded()
    if current is not None and current.ident == upload.ident:
        previous = st.session_state.pop(PREVIOUS_KEY, None)
        if previous is not None and previous.ident != upload.ident:
            st.session_state[LOADED_KEY] = previous
        else:
            st.session_state.pop(LOADED_KEY, None)
        st.session_state[UNREADABLE_KEY] = message
        st.rerun()
    where.error(md_param(message), icon=":material/error:")
    st.stop()


def show_unreadable(where: Any) -> None:
    """Show (once) the message :func:`unreadable` left for this run."""
    message = st.session_state.pop(UNREADABLE_KEY, None)
    if isinstance(message, Markdown):
        where.error(message, icon=":material/error:")


def adapter_name(upload: Upload, detected: Detected, *, label: str = "Loaded") -> Markdown:
    """One markdown line naming the loaded adapter: its files (or Hub reference), the base
    model its config names, format, family, ranks and module count. File and config text is
    escaped. ``label`` starts the line (the compare tab's second adapter is "Adapter B")."""
    d = detected.describe
    if upload.ident.startswith("hub:"):
        where = md_code(upload.label)
    else:
        names = [name for name, _ in upload.files]
        weights = [n for n in names if not _is_config(n)]
        configs = [n for n in names if _is_config(n)]
        where = Markdown(" + ").join(md_code(n) for n in weights + configs) or Markdown("(no files)")
    what = [md("{} {}", d.get("format", "?"), ", ".join(d.get("families") or ["lora"]))]
    ranks = d.get("ranks") or []
    if ranks:
        what.append(md("r = {}", ranks[0]) if len(ranks) == 1 else md("r = {}..{}", ranks[0], ranks[-1]))
    what.append(md("{:,} modules", d.get("modules", 0)))
    meta = d.get("metadata") or {}
    parts = [md("**{}:** {}", label, where), Markdown(", ").join(what)]
    if d.get("name"):
        parts.append(md("adapter {!c}", d["name"]))
    base = meta.get("base_model_name_or_path") or meta.get("ss_sd_model_name") or meta.get("model")
    if isinstance(base, str) and base.strip():
        parts.append(md("base model {!c}", base))
    return Markdown(" · ").join(parts)


def header_row(upload: Upload, *, demo: bool = False) -> Any:
    """The line naming the loaded adapter, with Clear beside it (not for the demo or a Hub
    link, which their own inputs switch off). Files that cannot be read are dropped instead
    (:func:`unreadable`); returns the placeholder that :func:`adapter_name` fills (it shows
    "Adapter:" and the file names until then)."""
    row = st.container(horizontal=True, vertical_alignment="center")
    slot = row.empty()
    # "Adapter", not "Loaded": the files (or Hub link) may turn out unreadable (then an
    # error follows and this line stays); :func:`adapter_name` writes "Loaded: ..." once read.
    slot.markdown(md("**Adapter:** {}", upload.label), width="stretch")
    current = loaded()
    if not demo and current is not None and upload.ident == current.ident:
        row.button("Clear", key=CLEAR_KEY, on_click=clear, icon=":material/close:",
                   help="Forget these files (they are only in this session's memory). To "
                        "audit another adapter you can also just drop its files above: they "
                        "replace these.")
    return slot


def showing() -> str | None:
    """What the page will show before it reads anything: ``"files"`` (an adapter is loaded),
    ``"hub"`` (the link names a Hub adapter), ``"demo"`` (the demo switch is on) or None."""
    if loaded() is not None:
        return "files"
    if st.query_params.get("hf", "").strip():
        return "hub"
    from .examples import chosen

    if chosen() is not None:
        return "demo"  # an example, shipped with the app: as the demo
    demo = st.session_state.get(DEMO_KEY)
    if demo is None:
        demo = st.query_params.get(DEMO_KEY, "").lower() == "true"
    return "demo" if demo else None


def inputs_box(*, elsewhere: bool = False) -> Any:
    """Where the adapter inputs go: the page itself while nothing is shown, else a collapsed
    expander (results first: on a phone the inputs no longer stack before the first result).
    ``elsewhere``: the page opens on a tab that does not show the adapter (Rank over training,
    with its own upload): the inputs fold away too, so that tab's results come first."""
    shown = showing()
    if shown is None and elsewhere:
        return st.expander("Audit one adapter",
                           expanded=False, icon=":material/upload_file:")
    if shown is None:
        return st.container()
    return st.expander(inputs_label(), expanded=False, icon=":material/upload_file:")


def inputs_label() -> Markdown:
    """The folded inputs' label while an adapter is shown (other tabs point at it by name)."""
    return (Markdown("Upload your own adapter (files or the Hub)") if showing() == "demo"
            else Markdown("Load another adapter (files or the Hub), base model weights"))
