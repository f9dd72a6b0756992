"""What the notebooks show: tables whose texts are shown whole (answers are the lesson, and pandas cuts cells
at 50 characters), sentences that explain numbers, and plots that look alike and land as PNGs in the run folder."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


class WholeTable(pd.DataFrame):
    """A DataFrame that displays every cell in full (HTML in Jupyter, text elsewhere), and so do the
    frames computed from it (`set_index`, a selection)."""

    @property
    def _constructor(self):
        return WholeTable

    def _repr_html_(self):
        with pd.option_context("display.max_colwidth", None):
            return super()._repr_html_()

    def __repr__(self):
        with pd.option_context("display.max_colwidth", None, "display.width", 10_000, "display.max_columns", None):
            return super().__repr__()


def whole(data, **kwargs) -> WholeTable:
    return WholeTable(pd.DataFrame(data, **kwargs))


def differences_table(differences):
    """What this machine does differently from what was asked: (setting, asked, used here, why) rows."""
    return whole(differences, columns=["setting", "asked", "used here", "why"])


class Sentences(str):
    """Text that a notebook shows as Markdown (and as itself in plain output): what the numbers mean."""

    def _repr_markdown_(self):
        return str(self)

    def __repr__(self):
        return str(self)


def new_figure(width: float = 6.4, height: float = 3.2):
    import matplotlib.pyplot as plt  # headless, matplotlib picks Agg; in Jupyter, the inline backend

    fig, ax = plt.subplots(figsize=(width, height), dpi=80)  # small PNGs keep notebooks light
    ax.grid(alpha=0.3)
    return fig, ax


def finish(fig, path: str | Path | None = None):
    """Tighten, save to `path` (if given) and close; a cell that returns the figure shows it once."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    if path is not None:
        from helpers.rundir import replacing

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with replacing(Path(path)) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return fig

