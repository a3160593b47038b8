"""Figures for the book: the live latency plot and the roofline (chapter 1).

Every figure reaches the reader as a PNG, whatever matplotlib backend the kernel runs
(:func:`show_figures_as_png`). :class:`LivePlot` draws a matplotlib figure as a PNG inside an
ipywidgets ``Output`` and redraws it as each measured point arrives. It needs only the core widgets
of ipywidgets 7 and 8 (Colab ships 7.7.1), and because the PNG is an output of the ``Output``
widget, its last state is saved with the notebook's widget state and shows in the rendered book.

Readable on the page: every figure is drawn at most :data:`CONTENT_WIDTH_PX` wide at
:data:`PNG_DPI`, the width of the book's content column, so the page shows it at its drawn size,
and no text in it is smaller than :data:`MIN_FONT_PT` points (12.5 px at 100 dpi; 9 pt is 12 CSS
px). ``tests/test_plots.py`` checks both for every figure here; the browser test checks that the
column is that wide and that no figure is shrunk.
"""
from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython import get_ipython
from IPython.display import display
from matplotlib import ticker
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from .checks import check_int
from .cost import Device, attainable_flops

PNG_DPI = 100
# The book's content column at a 1280 px wide window, measured in the built page (tests/browser).
CONTENT_WIDTH_PX = 688
# The widest figure size to ask for: its tight bounding box then stays within CONTENT_WIDTH_PX.
MAX_WIDTH_IN = 6.8
# The smallest text in any figure, in points.
MIN_FONT_PT = 9


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, drawn the same way under every matplotlib backend."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight")
    return buffer.getvalue()


def show_figures_as_png(shell=None) -> None:
    """Make IPython display every matplotlib figure as a PNG, whatever the backend.

    Under a non-interactive backend (``MPLBACKEND=Agg``, common on CI machines) IPython knows no
    PNG form of a figure and shows the text ``<Figure size ...>``, and so would the rendered book.
    Called when this module is imported into an IPython session; ``shell`` defaults to it.
    """
    shell = shell or get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, figure_png)


show_figures_as_png()


def text_width_in(text: str, size: float = MIN_FONT_PT) -> float:
    """How wide ``text`` is drawn at ``size`` points, in inches (plain text, no mathtext)."""
    renderer = RendererAgg(10, 10, PNG_DPI)
    width, _, _ = renderer.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return width / PNG_DPI


def plain_log_axis(axis) -> None:
    """A log axis labelled in plain numbers at 1, 2 and 5 per decade (10, 20, 50 rather than 10^1)."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_minor_formatter(ticker.NullFormatter())


class LivePlot:
    """A latency plot that redraws as points arrive; each series may carry a predicted curve.

    ``logy=True`` draws the y axis on a log scale, labelled in plain numbers: series an order of
    magnitude apart (chapter 3's PIE against PID) then stay apart instead of one being squashed
    flat along the bottom. Every y value (measured and predicted) must then be positive.
    """

    def __init__(self, xlabel: str, ylabel: str = "latency (ms)", title: str = "", *, logy: bool = False) -> None:
        if not isinstance(logy, bool):
            raise ValueError(f"logy must be True or False, got {logy!r}")
        self.output = widgets.Output()
        self.fig, self.ax = plt.subplots(figsize=(6.4, 3.6))
        plt.close(self.fig)  # shown only through self.output, never twice
        self.xlabel, self.ylabel, self.title, self.logy = xlabel, ylabel, title, logy
        self.measured: dict[str, dict[float, float]] = {}
        self.predicted: dict[str, dict[float, float]] = {}

    def add(self, series: str, x: float, y: float, predicted: float | None = None) -> None:
        """Record one measured point (and its prediction) and redraw the figure."""
        if self.logy:
            for name, value in (("y", y), ("predicted", predicted)):
                if value is not None and not value > 0:
                    raise ValueError(f"{name} must be > 0 on a log axis (logy=True), got {value!r}")
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
        if self.logy:
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
        ax.grid(alpha=0.3, which="major")
        if self.measured:
            ax.legend(fontsize=MIN_FONT_PT)
        self.fig.tight_layout()
        return self.fig

    def redraw(self) -> None:
        """Replace the image shown in :attr:`output` with the current figure, as a PNG alone."""
        png = figure_png(self.draw())
        with self.output:
            self.output.clear_output(wait=True)
            display({"image/png": png}, raw=True)

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
    ax.legend(fontsize=MIN_FONT_PT)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str) -> None:
    ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=color, edgecolor="black", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def _arrow(ax, x0: float, y0: float, x1: float, y1: float) -> None:
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "lw": 1})


def pie_pid_diagram(U: int = 3) -> plt.Figure:
    """The PID paper's Figures 1 and 2, redrawn: U encodings M_u (PIE) against one shared M (PID).

    Chapter 3. Above, PIE encodes "Z_u : X" U times and each decoder reads its own M_u; below, PID
    encodes X once, and U decoders, each starting from its prompt Z_u, read the same M. (Stacked, not
    side by side, so that the page shows it at its drawn size with 9 pt labels.)
    """
    fig, (left, right) = plt.subplots(2, 1, figsize=(MAX_WIDTH_IN - 0.2, 1.05 * U + 2.2))
    for ax, title in ((left, "PIE: one encoding per prompt"), (right, "PID: encode once, decode in parallel")):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, U * 1.2 + 0.4)
        ax.axis("off")
        ax.set_title(title, fontsize=10)
    for u in range(U):
        y = U * 1.2 - 1.0 - u * 1.2
        name = f"{u + 1}" if u < U - 1 else "U"
        _box(left, 0.2, y, 2.6, 0.8, f"$Z_{name}$ : $X$", "#dbe9f6")
        _arrow(left, 2.8, y + 0.4, 3.6, y + 0.4)
        _box(left, 3.6, y, 1.6, 0.8, f"encoder\n→ $M_{name}$", "#f6e3c7")
        _arrow(left, 5.2, y + 0.4, 6.2, y + 0.4)
        _box(left, 6.2, y, 1.6, 0.8, "decoder", "#d8efd3")
        _arrow(left, 7.8, y + 0.4, 8.4, y + 0.4)
        left.text(8.5, y + 0.4, f"$Y_{name}$", va="center", fontsize=9)
        _box(right, 4.9, y, 2.6, 0.8, f"decoder\n<pad> $Z_{name}$ :", "#d8efd3")
        _arrow(right, 3.7, U * 0.6 + 0.2, 4.9, y + 0.4)
        _arrow(right, 7.5, y + 0.4, 8.2, y + 0.4)
        right.text(8.3, y + 0.4, f"$Y_{name}$", va="center", fontsize=9)
    mid = U * 0.6 - 0.2
    _box(right, 0.2, mid, 1.2, 0.8, "$X$", "#dbe9f6")
    _arrow(right, 1.4, mid + 0.4, 2.1, mid + 0.4)
    _box(right, 2.1, mid, 1.6, 0.8, "encoder\n→ $M$", "#f6e3c7")
    fig.tight_layout()
    plt.close(fig)
    return fig


def training_curve(validation: list[dict], title: str, target: float = 0.9) -> plt.Figure:
    """Validation slot accuracy and JGA against the training step, from a checkpoint's report (chapter 3)."""
    steps = [v["step"] for v in validation]
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.plot(steps, [v["slot_accuracy"] for v in validation], "o-", label="slot accuracy")
    ax.plot(steps, [v["jga"] for v in validation], "s-", label="JGA")
    ax.axhline(target, ls="--", c="gray", lw=1, label=f"target JGA {target:.0%}")
    ax.set(xlabel="training step", ylabel="validation score", ylim=(0, 1.02), title=title)
    ax.legend(loc="lower right", fontsize=MIN_FONT_PT)
    fig.tight_layout()
    plt.close(fig)
    return fig


def schedule_grid(tokens: list[list[str]], made: list[list[int]], title: str = "") -> plt.Figure:
    """The pipelined decoder's schedule, as the paper's Figure 2: a row per subsequence, a column per
    time-step, and in each cell the token that subsequence made at that step (chapter 4).

    ``tokens[i]`` is subsequence i's tokens in order (its ``</s>`` included); ``made[t]`` lists the
    subsequences that made a token at step t + 1 (:class:`pidutils.pipelined.Schedule`). Columns
    narrow to fit the page, a long token wraps inside its cell, and a schedule too long for one
    band of at least 0.55-inch columns continues in a band below.
    """
    position = [0] * len(tokens)
    cells = {}
    for t, subs in enumerate(made):
        for i in subs:
            cells[(i, t)] = tokens[i][position[i]] if position[i] < len(tokens[i]) else "?"
            position[i] += 1
    steps, rows = len(made), len(tokens)
    left, right, avail = 0.5, 0.1, MAX_WIDTH_IN - 0.6
    per_band = max(1, min(steps, int(avail // 0.55)))
    bands = math.ceil(steps / per_band) if steps else 1
    cell_w = min(0.85, avail / per_band)
    wrapped = {key: _wrap(text, cell_w - 0.08) for key, text in cells.items()}
    lines = max((text.count("\n") + 1 for text in wrapped.values()), default=1)
    cell_h = max(0.42, 0.17 * lines + 0.12)
    band_h, gap, top = cell_h * rows, 0.45, 0.35 if title else 0.1
    height = top + bands * band_h + bands * gap
    fig = plt.figure(figsize=(left + cell_w * per_band + right, height))
    for band in range(bands):
        first, last = band * per_band, min(steps, (band + 1) * per_band)
        y0 = height - top - (band + 1) * band_h - band * gap
        ax = fig.add_axes([left / fig.get_figwidth(), y0 / height, cell_w * per_band / fig.get_figwidth(),
                           band_h / height])
        for (i, t), text in wrapped.items():
            if first <= t < last:
                end = cells[(i, t)] == "</s>"
                ax.add_patch(plt.Rectangle((t, i), 1, 1, facecolor="#eeeeee" if end else f"C{i % 10}",
                                           alpha=0.35, edgecolor="white"))
                ax.text(t + 0.5, i + 0.5, text, ha="center", va="center", fontsize=MIN_FONT_PT,
                        parse_math=False, linespacing=1.0)
        ax.set_xlim(first, first + per_band)
        ax.set_ylim(rows, 0)
        ax.set_xticks([t + 0.5 for t in range(first, last)], [str(t + 1) for t in range(first, last)],
                      fontsize=MIN_FONT_PT)
        ax.set_yticks([i + 0.5 for i in range(rows)], [f"$Y_{{{i + 1}}}$" for i in range(rows)],
                      fontsize=MIN_FONT_PT + 1)
        ax.tick_params(length=0)
        if band == 0 and title:
            ax.set_title(title, fontsize=10)
        if band == bands - 1:
            ax.set_xlabel("time-step", fontsize=10)
    plt.close(fig)
    return fig


def _wrap(text: str, width_in: float, size: float = MIN_FONT_PT) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``size`` points: after a hyphen or at
    a space where it can, inside a word where it must."""
    if text_width_in(text, size) <= width_in:
        return text
    chars = max(2, int(len(text) * width_in / text_width_in(text, size)))
    return "\n".join(textwrap.wrap(text, chars, break_long_words=True, break_on_hyphens=True)) or text


def mask_matrix(labels: list[str], allowed, distance, title: str = "") -> plt.Figure:
    """The paper's Figure 3: which token (row) may attend to which (column) under Eq. (4), with the
    Manhattan distance that sets their relative position written in each allowed cell (chapter 4).
    Cells narrow (down to 0.2 inch) so that the matrix fits the page at 9 pt."""
    n = len(labels)
    margin = max((text_width_in(label) for label in labels), default=0.5) + 0.55
    cell = max(0.2, min(0.45, (MAX_WIDTH_IN - margin - 0.2) / max(n, 1)))
    fig, ax = plt.subplots(figsize=(cell * n + margin + 0.2, cell * n + margin + 0.4))
    ax.imshow([[1.0 if allowed[q][k] else 0.0 for k in range(n)] for q in range(n)], cmap="Blues", vmin=0, vmax=1.6)
    for q in range(n):
        for k in range(n):
            if allowed[q][k]:
                ax.text(k, q, str(int(distance[q][k])), ha="center", va="center", fontsize=MIN_FONT_PT)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=MIN_FONT_PT)
    ax.set_yticks(range(n), labels, fontsize=MIN_FONT_PT)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def speedup_curve(measured: dict[int, float], predicted: dict[int, float], xlabel: str, title: str = "",
                  paper: dict[int, float] | None = None) -> plt.Figure:
    """Measured speed-up against a count (chapter 4: the number of subsequences, the paper's Figure 4),
    beside the bound its time-steps predict, and the paper's points if given."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    xs = sorted(measured)
    ax.plot(xs, [measured[x] for x in xs], "o-", label="measured (this book)")
    px = sorted(predicted)
    ax.plot(px, [predicted[x] for x in px], "--", color="C0", alpha=0.7, label="time-step ratio (upper bound)")
    if paper:
        ax.plot(sorted(paper), [paper[x] for x in sorted(paper)], "s", color="C3",
                label="paper (its quoted points only)")
    ax.axhline(1.0, color="grey", lw=1)
    ax.set(xlabel=xlabel, ylabel="speed-up over sequential", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT_PT)
    fig.tight_layout()
    plt.close(fig)
    return fig


TRACE_COLORS = {"stood": "#b7e4c7", "fell": "#f4a6a6", "unjudged": "#e9ecef", "target": "#a5c8f0"}


def speculative_trace(rounds: list[tuple[list[str], int, str]], title: str = "",
                      width: float = MAX_WIDTH_IN) -> plt.Figure:
    """The paper's Figure 1 for one output: a line per round, the draft's guesses in green where they
    stood and in red (struck out) where the first fell, later guesses grey (never judged), and the
    target's own token in blue (chapter 5).

    ``rounds[k]`` is (the round's guesses as text, how many stood, the target's token as text). The
    figure is ``width`` inches wide (at most the page's column, so that its 9 pt text is shown at
    that size); a round that does not fit on one line continues on the next, unlabelled.
    """
    if not 2.0 <= width <= MAX_WIDTH_IN:
        raise ValueError(f"width must be in [2.0, {MAX_WIDTH_IN}] inches (the page's column), got {width!r}")
    left, right, line_h, gap = 0.8, 0.05, 0.34, 0.04
    avail = width - left - right
    lines: list[tuple[int | None, list[tuple[float, float, str, str]]]] = []  # (round or None, boxes)
    for k, (guesses, stood, token) in enumerate(rounds):
        cells = [(g, "stood" if i < stood else "fell" if i == stood else "unjudged") for i, g in enumerate(guesses)]
        cells += [(token, "target")] if token else []
        x, boxes, label = 0.0, [], k
        for text, kind in cells:
            w = min(text_width_in(text or " ") + 0.14, avail)
            if boxes and x + w > avail:
                lines.append((label, boxes))
                x, boxes, label = 0.0, [], None
            boxes.append((x, w, text, kind))
            x += w + gap
        lines.append((label, boxes))
    top, bottom = 0.7 if title else 0.45, 0.05
    height = top + line_h * max(len(lines), 1) + bottom
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes([left / width, bottom / height, avail / width, line_h * max(len(lines), 1) / height])
    for y, (_, boxes) in enumerate(lines):
        for x, w, text, kind in boxes:
            ax.add_patch(plt.Rectangle((x, y + 0.08), w, 0.84, facecolor=TRACE_COLORS[kind], edgecolor="white"))
            ax.text(x + w / 2, y + 0.5, text, ha="center", va="center", fontsize=MIN_FONT_PT, parse_math=False,
                    color="#7a1f1f" if kind == "fell" else "black")
            if kind == "fell":
                ax.plot([x + 0.04, x + w - 0.04], [y + 0.5, y + 0.5], color="#7a1f1f", lw=1)
    ax.set_xlim(0, avail)
    ax.set_ylim(max(len(lines), 1), 0)
    labelled = [(y, k) for y, (k, _) in enumerate(lines) if k is not None]
    ax.set_yticks([y + 0.5 for y, _ in labelled], [f"round {k + 1}" for _, k in labelled], fontsize=MIN_FONT_PT)
    ax.tick_params(length=0)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c) for c in TRACE_COLORS.values()]
    ax.legend(handles, ["guess stood", "guess fell", "guess not judged", "target's token"], fontsize=MIN_FONT_PT,
              ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, columnspacing=1.2,
              handlelength=1.4)
    ax.set_title(title, fontsize=10, pad=22)
    plt.close(fig)
    return fig


def medusa_diagram(k: int = 3) -> plt.Figure:
    """Medusa's idea (chapter 6): the target's body runs once; its LM head reads h_t for y_{t+1}, and K
    heads read the same h_t for y_{t+2} .. y_{t+K+1}, each a residual SiLU block and its own LM head."""
    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN - 0.2, 0.62 * (k + 1) + 0.9))
    height = 0.62 * (k + 1)
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.1, height + 0.3)
    ax.axis("off")
    mid = height / 2 - 0.3
    _box(ax, 0.1, mid, 1.9, 0.6, "dialogue →\nencoder (once)", "#f6e3c7")
    _arrow(ax, 2.0, mid + 0.3, 2.5, mid + 0.3)
    _box(ax, 2.5, mid, 1.9, 0.6, "decoder body\n(16 blocks)", "#d8efd3")
    _arrow(ax, 4.4, mid + 0.3, 4.9, mid + 0.3)
    ax.text(4.95, mid + 0.3, "$h_t$", va="center", fontsize=10)
    for i in range(k + 1):
        y = height - 0.62 * (i + 1) + 0.06
        _arrow(ax, 5.4, mid + 0.3, 5.8, y + 0.25)
        label = "LM head" if i == 0 else f"head {i}: $W_2^{{({i})}}(\\mathrm{{SiLU}}(W_1^{{({i})}}h)+h)$"
        _box(ax, 5.8, y, 3.1, 0.5, label, "#dbe9f6" if i == 0 else "#efe0f7")
        _arrow(ax, 8.9, y + 0.25, 9.2, y + 0.25)
        ax.text(9.25, y + 0.25, f"$y_{{t+{i + 1}}}$", va="center", fontsize=10)
    ax.set_title("one pass of the target: its own next token and K guesses beyond it", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


TREE_COLORS = {"root": "#a5c8f0", "accepted": "#b7e4c7", "stood": "#e2f3e8", "fell": "#f4a6a6", "node": "#e9ecef"}


def candidate_tree(paths: list[tuple[int, ...]], labels: list[str], *, kinds: list[str] | None = None,
                   title: str = "") -> plt.Figure:
    """A Medusa tree (chapter 6): the root (node 0) at the left, each node one column right of its
    parent, labelled ``labels[i]`` (node 0 first, then ``paths`` in order), coloured by ``kinds[i]``:
    ``root``, ``accepted`` (on the winning branch), ``stood`` (its token is the target's, but a
    deeper branch won), ``fell``, or ``node`` (not judged)."""
    index = {(): 0} | {p: i + 1 for i, p in enumerate(paths)}
    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for p in paths:
        children.setdefault(p[:-1], []).append(p)
    row: dict[tuple[int, ...], float] = {}

    def place(node: tuple[int, ...], next_row: int) -> int:
        kids = children.get(node, [])
        if not kids:
            row[node] = next_row
            return next_row + 1
        for kid in kids:
            next_row = place(kid, next_row)
        row[node] = (row[kids[0]] + row[kids[-1]]) / 2
        return next_row

    rows = place((), 0)
    depth = max(len(p) for p in paths)
    kinds = kinds or ["root"] + ["node"] * len(paths)
    width = MAX_WIDTH_IN - 0.2
    col_w = width / (depth + 1)
    box_w = min(1.3, col_w - 0.2)
    wrapped = [_wrap(label, box_w - 0.06) for label in labels]
    line_h = 0.4 if any("\n" in w for w in wrapped) else 0.3
    fig, ax = plt.subplots(figsize=(width, line_h * rows + (0.9 if title else 0.5)))
    ax.set_xlim(0, width)
    ax.set_ylim(rows, -0.2)
    ax.axis("off")
    for node, i in index.items():
        x, y = len(node) * col_w, row[node]
        if node:
            parent = node[:-1]
            ax.plot([len(parent) * col_w + box_w, x], [row[parent], y], color="#999999", lw=0.8, zorder=0)
        ax.add_patch(plt.Rectangle((x, y - 0.42), box_w, 0.84, facecolor=TREE_COLORS[kinds[i]], edgecolor="white"))
        ax.text(x + box_w / 2, y, wrapped[i], ha="center", va="center", fontsize=MIN_FONT_PT,
                parse_math=False)
    used = [k for k in TREE_COLORS if k in kinds]
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=TREE_COLORS[k]) for k in used]
    names = {"root": "root: the target's token", "accepted": "accepted branch", "stood": "stood, not deepest",
             "fell": "fell", "node": "candidate"}
    ax.legend(handles, [names[k] for k in used], fontsize=MIN_FONT_PT, ncol=len(used), loc="lower center",
              bbox_to_anchor=(0.5, 1.0), frameon=False, handlelength=1.2, columnspacing=1.0)
    if title:
        ax.set_title(title, fontsize=10, pad=24)
    fig.tight_layout()
    plt.close(fig)
    return fig


def prefix_layouts(U: int = 3) -> plt.Figure:
    """The KV layouts of chapter 7's three ways, for one document and U questions: the repeated prefix
    (every row prefilled whole, U copies of the document's KV), prefix caching (one prefill, its KV
    copied to each row, read once per row at every step) and shared-prefix attention (one copy, read
    once for all U rows, each row's own suffix beside it). Stacked, at the page's width."""
    fig, axes = plt.subplots(3, 1, figsize=(MAX_WIDTH_IN - 0.2, 1.0 * U + 3.6))
    titles = ("repeated prefix: U prefills, U copies of the document's KV",
              "prefix caching: one prefill, its KV copied to each row (read U times a step)",
              "shared prefix: one copy, read once a step by all U rows' queries")
    for way, (ax, title) in enumerate(zip(axes, titles)):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, U * 0.9 + 0.2)
        ax.axis("off")
        ax.set_title(title, fontsize=MIN_FONT_PT + 1)
        for u in range(U):
            y = U * 0.9 - 0.8 - u * 0.9
            name = f"{u + 1}" if u < U - 1 else "U"
            if way < 2:
                _box(ax, 0.2, y, 4.6, 0.7, "KV of $X$" + (" (prefilled)" if way == 0 else " (copy)"),
                     "#dbe9f6" if way == 0 else "#e8eef5")
            _box(ax, 5.0, y, 2.6, 0.7, f"KV of $Z_{name}$ : $Y_{name}$", "#d8efd3")
            ax.text(7.8, y + 0.35, f"row {name}", va="center", fontsize=MIN_FONT_PT)
        if way == 1:
            _box(ax, 8.6, U * 0.45 - 0.35, 1.3, 0.7, "prefill\n$X$ once", "#f6e3c7")
        if way == 2:
            mid = U * 0.45 - 0.35
            _box(ax, 0.2, mid, 4.0, 0.7, "KV of $X$, once", "#dbe9f6")
            for u in range(U):
                _arrow(ax, 5.0, U * 0.9 - 0.45 - u * 0.9, 4.2, mid + 0.35)
    fig.tight_layout()
    plt.close(fig)
    return fig


def compression_layouts(U: int = 3, *, n_s: int = 320, k: int = 16) -> plt.Figure:
    """Chapter 8's memory before and after: PID's U prompt rows cross-attending to the document's
    n_s encoder states, then to k summary vectors, the encoder's outputs at k summary tokens put in
    front of the document (each memory's width drawn to scale)."""
    check_int("U", U, 1, 6)
    check_int("k", k, 1, n_s)
    fig, axes = plt.subplots(2, 1, figsize=(MAX_WIDTH_IN - 0.2, 1.0 * U + 3.4))
    titles = (f"PID: every step of every prompt reads all n_s = {n_s} encoder states",
              f"compressed: the decoder reads k = {k} summary vectors, n_s / k = {n_s / k:.0f}× fewer")
    for ax, title, n in zip(axes, titles, (n_s, k)):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, U * 0.9 + 0.4)
        ax.axis("off")
        ax.set_title(title, fontsize=MIN_FONT_PT + 1)
        mid = U * 0.45 - 0.15
        width = 4.4 * n / n_s
        _box(ax, 0.2, mid, max(width, 0.35), 0.7, "" if n < n_s else f"{n} states of $X$",
             "#dbe9f6" if n == n_s else "#f6e3c7")
        if n < n_s:
            ax.text(0.2, mid - 0.2, f"{n} summary vectors of $X$", va="top", fontsize=MIN_FONT_PT)
        for u in range(U):
            name = f"{u + 1}" if u < U - 1 else "U"
            y = U * 0.9 - 0.6 - u * 0.9
            _box(ax, 6.2, y, 2.4, 0.7, f"<s> $Z_{name}$ : $Y_{name}$", "#d8efd3")
            ax.text(8.75, y + 0.35, f"prompt {name}", va="center", fontsize=MIN_FONT_PT)
            _arrow(ax, 6.2, y + 0.35, 0.25 + max(width, 0.35), mid + 0.35)
    fig.tight_layout()
    plt.close(fig)
    return fig


def slot_heatmap(rows: list[dict], title: str = "") -> plt.Figure:
    """Each slot's accuracy (a column per k, from :func:`pidutils.memories.quality_by_k`), slots
    sorted by their accuracy at the smallest k, worst first: chapter 8's counterpart of Wingate et
    al.'s Figure 4, information kept as the memory is compressed harder."""
    if not rows:
        raise ValueError("rows must hold at least one k")
    rows = sorted(rows, key=lambda r: r["k"])
    slots = sorted(rows[0]["slots"], key=lambda s: (rows[0]["slots"][s], s))
    grid = [[row["slots"][s] for row in rows] for s in slots]
    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN - 0.2, 0.22 * len(slots) + 1.4))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(rows)), [str(r["k"]) for r in rows], fontsize=MIN_FONT_PT)
    ax.set_yticks(range(len(slots)), slots, fontsize=MIN_FONT_PT)
    ax.set_xlabel("k, summary vectors per document", fontsize=MIN_FONT_PT)
    ax.set_title(title, fontsize=MIN_FONT_PT + 1)
    fig.colorbar(image, ax=ax, label="slot accuracy").ax.tick_params(labelsize=MIN_FONT_PT)
    fig.tight_layout()
    plt.close(fig)
    return fig


def k_curves(curves: dict[str, dict[int, float]], *, ylabel: str, title: str = "",
             target: float | None = None) -> plt.Figure:
    """One line per named curve of a score against k, the summary vectors per document, on a log2
    axis (chapter 8: each compressor's JGA and slot accuracy against k), with an optional target line."""
    if not curves:
        raise ValueError("curves must name at least one curve")
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for name, points in curves.items():
        ks = sorted(points)
        ax.plot(ks, [points[k] for k in ks], "o-", label=name)
    if target is not None:
        ax.axhline(target, ls="--", c="gray", lw=1, label=f"target {target:.2f}")
    ax.set_xscale("log", base=2)
    ks = sorted({k for points in curves.values() for k in points})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set(xlabel="k, summary vectors per document", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT_PT)
    fig.tight_layout()
    plt.close(fig)
    return fig
