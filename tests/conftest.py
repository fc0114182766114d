"""Fixtures shared by every test module."""

import sys

import pytest


@pytest.fixture(autouse=True)
def empty_streamlit_cache():
    """Tests that run Streamlit code start and end with an empty st.cache_data.

    It persists across AppTest runs in one process; engine-only tests never import streamlit,
    and this fixture does not import it for them.
    """
    st = sys.modules.get("streamlit")
    if st is not None:
        st.cache_data.clear()
    yield
    st = sys.modules.get("streamlit")
    if st is not None:
        st.cache_data.clear()
