"""Glossary: every term the pages use, in plain words, with its formula and where it shows."""

import streamlit as st

from ui import common, glossary, layout

page = common.setup_page(__file__)
layout.header(
    common.md_escape(page.label),
    "Every term the pages use, in plain words, with its formula, where it shows and where it "
    "comes from. Type part of a word to narrow the list; the link keeps it.",
    hint=None,
)
query = st.text_input("Find a term", key=glossary.TERM_PARAM, bind="query-params", max_chars=100,
                      placeholder="e.g. stable rank, phi, Gavish", help="Matches names, words and formulas.")
found = glossary.find(query)
if not found:
    st.info(common.md("No term matches {q!c}; clear the box to see all {n:,}.", q=query,
                      n=len(glossary.TERMS)), icon=":material/search_off:")
st.markdown(glossary.entries_markdown(found))  # one element: the page draws at once
