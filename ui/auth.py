"""Optional sign-in with Streamlit's own ``st.login`` (OpenID Connect).

When the deployment's secrets have an ``[auth]`` section (``redirect_uri``, ``cookie_secret``
and a provider: ``client_id``, ``client_secret``, ``server_metadata_url``, or named providers
``[auth.<name>]``), every page asks for sign-in before drawing anything else; a signed-in
user sees their name and a sign-out button in the sidebar. Without ``[auth]`` the app is
open. Streamlit needs Authlib for ``st.login`` (in requirements.txt).
"""

from __future__ import annotations

from typing import Mapping

import streamlit as st

from .common import md

__all__ = ["auth_providers", "require_login"]

_PROVIDER_KEYS = ("client_id", "server_metadata_url")


def auth_providers() -> list[str | None] | None:
    """Providers configured in ``st.secrets["auth"]``: ``None`` when sign-in is off; ``[None]``
    for the single default provider; provider names for ``[auth.<name>]`` sections."""
    try:
        section = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets file at all: sign-in is off
        return None
    if not isinstance(section, Mapping) or not section:
        return None
    named = [str(k) for k, v in section.items() if isinstance(v, Mapping)]
    default = [None] if any(k in section for k in _PROVIDER_KEYS) else []
    return default + named or None


def require_login() -> None:
    """If sign-in is configured and the user is not signed in: a sign-in screen, then stop."""
    providers = auth_providers()
    if providers is None:
        return
    if st.user.is_logged_in:
        with st.sidebar:
            who = st.user.get("name") or st.user.get("email") or "signed in"
            st.caption(md("Signed in as {}", who))
            st.button("Sign out", on_click=st.logout, key="lorarank_logout",
                      icon=":material/logout:")
        return
    st.title("lorarank")
    st.markdown("This lorarank instance is private to its team. **Sign in to continue.**")
    for provider in providers:
        label = "Sign in" if provider is None else f"Sign in with {provider}"
        st.button(label, key=f"lorarank_login_{provider or 'default'}", type="primary",
                  icon=":material/login:",
                  on_click=st.login, args=() if provider is None else (provider,))
    st.stop()
