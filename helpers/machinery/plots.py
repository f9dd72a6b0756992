"""Small matplotlib helpers so every plot looks alike and lands as a PNG in the run folder."""
from __future__ import annotations

from pathlib import Path


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
        from helpers.machinery.rundir import replacing

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with replacing(Path(path)) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return fig

