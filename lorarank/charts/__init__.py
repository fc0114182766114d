"""Pure Altair chart builders for the app's pages (altair and pandas only, never streamlit).

One module per page: :mod:`.sweep` (Rank sweep); ``stability`` and ``audit`` follow. Each
builder takes plain numbers (arrays, mappings) and returns an Altair chart with tooltips, so it
can be tested without a browser; shared theme pieces live in :mod:`._common`.
"""

from ._common import PALETTE, downsample_index, rank_color_scale, rank_label, split_facets
from .sweep import loss_chart, loss_frame, spectrum_chart, spectrum_frame
from .data import data_loss_chart, data_loss_frame, loss_focus, n_label
from .audit import *  # noqa: F401,F403  (Adapter audit; names in audit.__all__)
from .stability import *  # noqa: F401,F403  (alpha/r stability; names in stability.__all__)
from .series import *  # noqa: F401,F403  (rank over training; names in series.__all__)
from .finetune import *  # noqa: F401,F403  (full fine-tunes; names in finetune.__all__)
from .intruders import *  # noqa: F401,F403  (against the base; names in intruders.__all__)

__all__ = [
    "PALETTE", "rank_label", "rank_color_scale", "downsample_index", "split_facets",
    "spectrum_frame", "spectrum_chart", "loss_frame", "loss_chart",
    "data_loss_frame", "data_loss_chart", "loss_focus", "n_label",
]
