"""Figures: arrays and tables in, a matplotlib ``Figure`` out. Nothing here writes files.

One module per family of figures (``training``, ...); ``results.save_figure`` writes them.
"""

import matplotlib

matplotlib.use("Agg")  # headless machines; callers only ever save figures

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
