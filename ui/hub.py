"""Adapters from the Hugging Face Hub on the Adapter audit page, and where uploads go.

The link carries the adapter: ``?hf=owner/name`` (plus ``revision`` and ``subfolder``; ``hf_b``,
``revision_b``, ``subfolder_b`` for the compare mode's second adapter). After the first load
the link's ``revision`` is the resolved commit, so a shared link shows the same numbers later.
A token never enters the link: the server uses ``HF_TOKEN`` from its secrets or environment.

The downloaded files are read into memory once per commit (``st.cache_resource``, shared by
sessions, two entries), at most ``server.maxUploadSize`` of them per request (what an upload
could make the server hold), and audited like an upload; the engine call is
:func:`lorarank.hub.fetch_adapter_files`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import streamlit as st

from lorarank.errors import LoraRankError
from lorarank.hub import HubRef, HubSettings, fetch_adapter_files

from .audit import Upload
from .common import Markdown, error_line, md, progress_bar

__all__ = ["HubInput", "hub_input", "load_hub_upload", "hub_token", "hub_settings", "privacy_note",
           "PRIVACY_NOTE"]


@dataclass(frozen=True)
class HubInput:
    """The query-parameter names of one adapter slot (``""`` for A, ``"_b"`` for B)."""

    suffix: str = ""

    @property
    def repo_key(self) -> str:
        return "hf" + self.suffix

    @property
    def revision_key(self) -> str:
        return "revision" + self.suffix

    @property
    def subfolder_key(self) -> str:
        return "subfolder" + self.suffix

    @property
    def state_prefix(self) -> str:
        return f"audit_hub{self.suffix}_"


PRIVACY_NOTE = (
    "**Where your files go:** uploaded bytes stay in this server's memory for your session "
    "only; they are never written to disk, logs or the link. A Hub adapter is downloaded by "
    "the server from the Hub into its own bounded cache; only its name, revision and folder "
    "go in the link.")


def privacy_note() -> None:
    """Say plainly where uploaded bytes go (under the uploader)."""
    st.caption(Markdown(PRIVACY_NOTE))


def hub_token() -> str | None:
    """A read token from the app's secrets (``HF_TOKEN``), else None (the engine then reads
    the ``HF_TOKEN`` environment variable). Never from the URL."""
    try:
        value = st.secrets.get("HF_TOKEN")
    except Exception:  # noqa: BLE001 - no secrets file: no token from secrets
        value = None
    return str(value) if value else None


@st.cache_resource(show_spinner=False, max_entries=2, ttl=3600)
def _fetch_pinned(repo_id: str, commit: str, subfolder: str, max_bytes: int) -> Upload:
    """The files of one adapter at one commit, in memory (shared across sessions)."""
    fetched = fetch_adapter_files(HubRef(repo_id, commit, subfolder), token=hub_token(),
                                  settings=hub_settings())
    files = [(name, path.read_bytes()) for name, path in fetched.files]
    ref = fetched.pinned
    return Upload(tuple(files), f"hub:{ref.uri}", ref.uri)


def hub_settings() -> HubSettings:
    """The engine's Hub limits, with the per-request byte cap at most the upload limit.

    The page holds a Hub adapter's files in memory like an upload (shared by sessions, at most
    two commits), so a link can make the server hold no more than an upload could:
    ``server.maxUploadSize`` unless ``LORARANK_HF_MAX_BYTES`` is set explicitly.
    """
    import os

    settings = HubSettings.from_env()
    if os.environ.get("LORARANK_HF_MAX_BYTES", "").strip():
        return settings
    upload_limit = int(st.get_option("server.maxUploadSize")) * 2**20
    return dataclasses.replace(settings, max_bytes=min(settings.max_bytes, upload_limit))


@st.cache_data(show_spinner=False, max_entries=64, ttl=300)
def _resolve(repo_id: str, revision: str | None, subfolder: str) -> str:
    """The commit of a branch or tag, fetching the files on the way (cached 5 minutes, so
    a branch that moves is seen again soon)."""
    with progress_bar(f"Downloading {HubRef(repo_id, revision, subfolder).uri} from the Hub") as bar:
        fetched = fetch_adapter_files(HubRef(repo_id, revision, subfolder), token=hub_token(),
                                      settings=hub_settings(),
                                      progress=lambda done, total: bar(done, max(total, 1)))
    return fetched.commit


def load_hub_upload(ref: HubRef) -> tuple[Upload, str]:
    """``(upload, commit)`` of a Hub adapter; HubError / ConfigError as one sentence."""
    commit = _resolve(ref.repo_id, ref.revision, ref.subfolder)
    upload = _fetch_pinned(ref.repo_id, commit, ref.subfolder, hub_settings().max_bytes)
    return upload, commit


def _ref_from_url(slot: HubInput) -> HubRef | None:
    repo = st.query_params.get(slot.repo_key, "").strip()
    if not repo:
        return None
    return HubRef(repo, st.query_params.get(slot.revision_key) or None,
                  st.query_params.get(slot.subfolder_key, ""))


def _set_url(slot: HubInput, repo: str, revision: str, subfolder: str) -> None:
    for key, value in ((slot.repo_key, repo), (slot.revision_key, revision),
                       (slot.subfolder_key, subfolder)):
        if value.strip():
            st.query_params[key] = value.strip()
        elif key in st.query_params:
            del st.query_params[key]


def hub_input(slot: HubInput = HubInput(), *, label: str = "…or an adapter on the Hugging "
              "Face Hub", notices: Any = None) -> Upload | None:
    """Draw the Hub field of one adapter slot; fetch the adapter the link names.

    Returns the adapter's files as an :class:`~ui.audit.Upload` (identity
    ``hub:hf://owner/name@commit[/subfolder]``), or None when the link names none or it
    cannot be fetched (then one ``st.error`` sentence says why). Pins the link's revision to the
    resolved commit. ``notices``: where that error or the "loaded at commit" line goes (the
    field itself may sit in a collapsed expander); None: under the field.
    """
    prefix = slot.state_prefix
    with st.form(f"{prefix}form", border=False, enter_to_submit=True):
        cols = st.columns([3, 1.2, 1.5, 0.8], vertical_alignment="bottom")
        repo = cols[0].text_input(
            label, value=st.query_params.get(slot.repo_key, ""), key=f"{prefix}repo",
            placeholder="owner/name", max_chars=200,
            help="A LoRA adapter repo on the Hub (adapter_config.json + "
                 "adapter_model.safetensors, or a *lora*.safetensors). Private or gated repos "
                 "need a token in the server's secrets (HF_TOKEN); never put one in the link.")
        revision = cols[1].text_input(
            "revision", value=st.query_params.get(slot.revision_key, ""),
            key=f"{prefix}revision", placeholder="main", max_chars=200,
            help="Branch, tag or commit. After loading, the link pins the commit it resolved "
                 "to, so it shows the same numbers later.")
        subfolder = cols[2].text_input(
            "subfolder", value=st.query_params.get(slot.subfolder_key, ""),
            key=f"{prefix}subfolder", placeholder="(repo root)", max_chars=500,
            help="Folder inside the repo that holds the adapter, e.g. checkpoint-500.")
        submitted = cols[3].form_submit_button("Load", icon=":material/cloud_download:")
    if submitted:
        _set_url(slot, repo, revision, subfolder)
    try:
        ref = _ref_from_url(slot)
        if ref is None:
            return None
        upload, commit = load_hub_upload(ref)
    except LoraRankError as exc:
        (notices if notices is not None else st).error(error_line(exc), icon=":material/error:")
        return None
    if st.query_params.get(slot.revision_key) != commit:
        st.query_params[slot.revision_key] = commit
    (notices if notices is not None else st).caption(md(
        "Loaded **{repo}**{sub} at commit {commit!c} from the Hub ({size}); the link pins this commit.",
        repo=ref.repo_id, sub=md(" / {}", ref.subfolder) if ref.subfolder else Markdown(""),
        commit=commit[:12], size=_size(upload.size)))
    return upload


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"
