"""Figures for the book: the live latency plot and the roofline (chapter 1).

:class:`LivePlot` draws an ordinary inline matplotlib figure inside an ipywidgets ``Output`` and
redraws it as each measured point arrives. It needs no widget manager beyond the one JupyterLab
and Colab ship, and because the figure is an output of the ``Output`` widget, its last state is
saved with the notebook's widget state and shows in the rendered book.
"""
from __future__ import annotations

from collections.abc import Iterable

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from .cost import Device, attainable_flops


class LivePlot:
    """A latency plot that redraws as points arrive; each series may carry a predicted curve."""

    def __init__(self, xlabel: str, ylabel: str = "latency (ms)", title: str = "") -> None:
        self.output = widgets.Output()
        self.fig, self.ax = plt.subplots(figsize=(6.4, 3.6))
        plt.close(self.fig)  # shown only through self.output, never twice
        self.xlabel, self.ylabel, self.title = xlabel, ylabel, title
        self.measured: dict[str, dict[float, float]] = {}
        self.predicted: dict[str, dict[float, float]] = {}

    def add(self, series: str, x: float, y: float, predicted: float | None = None) -> None:
        """Record one measured point (and its prediction) and redraw the figure."""
        self.measured.setdefault(series, {})[x] = y
        if predicted is not None:
            self.predicted.setdefault(series, {})[x] = predicted
        self.redraw()

    def draw(self) -> plt.Figure:
        """Draw every series: measured points joined by lines, predictions dashed in the same colour."""
        ax = self.ax
        ax.clear()
        for i, (series, points) in enumerate(sorted(self.measured.items())):
            color = f"C{i}"
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], "o-", color=color, label=f"{series} (measured)")
            if series in self.predicted:
                px = sorted(self.predicted[series])
                ax.plot(px, [self.predicted[series][x] for x in px], "--", color=color, alpha=0.7,
                        label=f"{series} (predicted)")
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(self.ylabel)
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        if self.measured:
            ax.legend(fontsize="small")
        self.fig.tight_layout()
        return self.fig

    def redraw(self) -> None:
        """Replace the figure shown in :attr:`output` with the current one."""
        self.draw()
        with self.output:
            self.output.clear_output(wait=True)
            display(self.fig)

    def _ipython_display_(self) -> None:
        self.redraw()
        display(self.output)


def roofline(device: Device, points: dict[str, tuple[float, float]],
             intensities: Iterable[float] | None = None) -> plt.Figure:
    """The roofline of ``device`` with measured ``points``: name -> (FLOP/byte, achieved FLOP/s)."""
    xs = sorted(set(intensities or []) | {p[0] for p in points.values()} | {device.ridge_point})
    lo, hi = min(xs) / 4, max(xs) * 4
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.loglog(grid, [attainable_flops(x, device) for x in grid], "k-", label=f"roofline: {device.name}")
    ax.axvline(device.ridge_point, color="grey", ls=":", label=f"ridge point {device.ridge_point:.1f} FLOP/B")
    for i, (name, (intensity, flops)) in enumerate(points.items()):
        ax.loglog([intensity], [flops], "o", color=f"C{i}", ms=8, label=name)
    ax.set_xlabel("operational intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig
