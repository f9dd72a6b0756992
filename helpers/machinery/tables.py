"""Tables whose texts are shown whole: answers are the lesson, and pandas cuts cells at 50 characters."""
from __future__ import annotations

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


class Sentences(str):
    """Text that a notebook shows as Markdown (and as itself in plain output): what the numbers mean."""

    def _repr_markdown_(self):
        return str(self)

    def __repr__(self):
        return str(self)
