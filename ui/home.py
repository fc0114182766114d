"""The home page (``app.py``): what lorarank answers, the LoRA formula, a link to each page."""

from __future__ import annotations

import streamlit as st

from . import common
from .common import md_escape

__all__ = ["render"]


def render() -> None:
    """Draw the home page (``app.py`` calls this on every visit)."""
    common.setup_page("Home")

    row = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    row.title("lorarank", width="content")
    common.copy_link(row)
    st.markdown(
        "**What LoRA rank do you need, and what did your adapter actually learn?** "
        "Is r = 64 buying anything over r = 8? Did raising r make training worse because of "
        "capacity or because of alpha/r scaling? How many directions does a trained adapter really "
        "use, and can it shrink without retraining? Every view here is a link you can send."
    )

    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("The mechanism")
        # Plain text, not st.latex: KaTeX's script and fonts cost a new visitor ~0.2 s.
        st.markdown("### *h* = *W x* + *s* · *B A x*")
        st.markdown("*B* is d_out × r, *A* is r × d_in, *s* the scale (alpha / r in PEFT).")
        st.markdown(
            "W is frozen; B starts at zero and A small and random, so the update "
            "`dW = s·B·A` has rank at most r. A task's update has a low intrinsic rank k: "
            "with r < k the adapter cannot hold it, with r > k the extra directions fit noise."
        )
        st.markdown(
            "| convention | scale s |\n"
            "| --- | --- |\n"
            "| PEFT `LoraConfig` | `lora_alpha / r` |\n"
            "| rsLoRA (PEFT `use_rslora=True`) | `lora_alpha / sqrt(r)` |\n"
            "| kohya / sd-scripts | `alpha / r` from the `.alpha` key; 1 when it is absent |\n"
            "| mlx-lm | `scale` from `lora_parameters` in `adapter_config.json` |"
        )
        st.caption("With alpha fixed, PEFT's s shrinks as r grows, so the learning rate that worked "
                   "at r = 8 is not the one that works at r = 64.")

    with right:
        st.subheader("Pages")
        for page in common.available_pages()[1:]:
            with st.container(border=True):
                st.page_link(page.path, label=page.label, icon=page.icon)
                st.caption(md_escape(page.question))
