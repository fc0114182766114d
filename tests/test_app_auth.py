"""Optional sign-in (st.login): with [auth] in the secrets every page asks first; without it
the app is open. Run headless with Streamlit's AppTest (the browser test is in e2e/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.navigation import available_pages

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60
AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "a-test-cookie-secret-of-some-length",
        "client_id": "lorarank-test", "client_secret": "not-a-real-secret",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}
PAGES = [p.path for p in available_pages()]


def open_page(path: str, *, auth: dict | None, user: dict | None = None, query: str = "") -> AppTest:
    """Run the home script (as a server does), switch to ``path`` with ``query`` and run it."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if auth is not None:
        at.secrets["auth"] = auth
    if user is not None:
        at.user = user
    at.run()
    if path != "app.py":
        at.switch_page(path)
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        at.query_params[key] = value
    return at.run()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_asks_for_sign_in_first(path):
    at = open_page(path, auth=AUTH, user={"is_logged_in": False})
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert "Sign in to continue" in at.markdown[0].value
    # Nothing of the page itself ran: one title, no inputs, no tables, no charts.
    assert [t.value for t in at.title] == ["lorarank"]
    assert not at.number_input and not at.text_input and not at.dataframe
    assert not at.get("arrow_vega_lite_chart") and not at.get("file_uploader")


def test_a_link_with_an_adapter_fetches_nothing_before_sign_in():
    at = open_page("pages/3_Adapter_audit.py", auth=AUTH, user={"is_logged_in": False},
                   query="hf=owner/name&demo=true")
    assert not at.error and [b.label for b in at.button] == ["Sign in"]


def test_named_providers_get_a_button_each():
    auth = {k: v for k, v in AUTH.items() if k in ("redirect_uri", "cookie_secret")}
    auth["google"] = {k: AUTH[k] for k in ("client_id", "client_secret", "server_metadata_url")}
    auth["microsoft"] = dict(auth["google"])
    at = open_page("app.py", auth=auth, user={"is_logged_in": False})
    assert [b.label for b in at.button] == ["Sign in with google", "Sign in with microsoft"]


def test_signed_in_user_sees_the_app_and_a_sign_out_button():
    at = open_page("app.py", auth=AUTH, user={"is_logged_in": True, "name": "Ada",
                                              "email": "ada@example.com"})
    assert not at.exception and not at.error
    assert "The mechanism" in [s.value for s in at.subheader]
    assert "Signed in as Ada" in [c.value for c in at.sidebar.caption]
    assert [b.label for b in at.sidebar.button] == ["Sign out"]


@pytest.mark.parametrize("path", ["app.py", "pages/3_Adapter_audit.py"])
def test_without_auth_the_app_is_open(path):
    at = open_page(path, auth=None)
    assert not at.exception and not at.error
    assert not [b for b in at.button if b.label.startswith("Sign in")]
