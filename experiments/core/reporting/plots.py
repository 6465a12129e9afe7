"""The few lines every single-panel figure of the suite shares: a headless figure, labels, a saved PNG."""

from __future__ import annotations

from pathlib import Path


def single_axes(figsize: tuple[float, float]):
    """(fig, ax) on the Agg backend: figures are written to files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def finish(fig, ax, xlabel: str, ylabel: str, title: str, out_png: Path, legend: bool = True,
           title_size: float | None = None) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
