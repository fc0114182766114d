"""Models on the Hub for the Adapter audit page, read by byte ranges (:mod:`lorarank.hub_ranges`).

A model named on the page (a base for the adapter audit, ``?base_hf=owner/name``; the two models
of the Full fine-tune tab) is listed and its safetensors headers read once per commit, shared
by sessions (:func:`hub_model`: a few entries, an hour); each computation then reads the
tensors it needs with a byte count of its own, against the page's per-request cap (the upload
limit, :func:`ui.hub.hub_settings`). Tokens come from the app's secrets or ``HF_TOKEN``.
"""

from __future__ import annotations

import streamlit as st

from lorarank.hub import parse_hub_uri

from .hub import hub_settings, hub_token

__all__ = ["hub_model", "pin", "open_hub", "base_weights"]


@st.cache_resource(show_spinner=False, max_entries=4, ttl=3600)
def hub_model(uri: str):
    """A Hub model's listing and headers (:func:`lorarank.hub_ranges.open_hub_model`)."""
    from lorarank.hub_ranges import open_hub_model

    return open_hub_model(uri, token=hub_token(), settings=hub_settings())


@st.cache_data(show_spinner=False, max_entries=64, ttl=300)
def pin(text: str) -> str:
    """``hf://owner/name@commit`` of ``owner/name[@revision]`` (cached 5 minutes: a branch moves)."""
    ref = parse_hub_uri(text if text.startswith("hf://") else "hf://" + text)
    with st.spinner(f"Reading {ref.uri} on the Hub (headers only)"):
        model = hub_model(ref.uri)
    return model.ref.with_revision(model.commit).uri


def open_hub(uri: str):
    """The model at ``uri`` (pinned) with a byte count of its own, for one computation."""
    return hub_model(uri).fresh(hub_settings())


def base_weights(uri: str, names):
    """Base weights for the adapter audit, checked against the byte cap for ``names`` (the
    adapted modules) before any tensor is read."""
    model = open_hub(uri)
    weights = model.base_weights()
    model.check_plan(sorted({weights.key_for(n) for n in names}))
    return weights
