"""lorarank home: what the tool answers, the LoRA formula, and a link to each page.

Run with ``streamlit run app.py``. The pages in ``pages/`` are auto-discovered, so a shared
deep link such as ``/Rank_sweep?true_rank=8`` works as the first request to a fresh server.

This file is also the server: ``streamlit run`` finds ``app = st.App(...)`` below and imports
the module (``__name__ == "app"``) to serve it, with a lifespan that imports the pages' heavy
modules in the background as the server starts (:mod:`ui.preload`) and server tuning for a new
visitor's first render (:mod:`ui.serving`). Each visit runs the file as
a script (``__name__ == "__main__"``), which draws the home page.
"""

import streamlit as st

if __name__ != "__main__":  # imported by `streamlit run app.py` (or an ASGI server): the server
    from ui.serving import lifespan, middleware

    app = st.App("app.py", lifespan=lifespan, middleware=middleware())
else:
    from ui.home import render

    render()
