"""Every figure of pidutils.plots is readable on the page, and LivePlot's log axis.

The rendered book shows a figure at its drawn size when it is no wider than the content column
(``plots.CONTENT_WIDTH_PX``, 688 px at a 1280 px window; the browser test measures the column and
checks that no figure is shrunk). So a text of s points is s * PNG_DPI / 72 px tall on the page, and
each must be at least 9 pt, 12 CSS px. Each figure function is drawn here with inputs like the
chapters' (and larger ones), saved as the book saves it (``plots.figure_png``), and checked.
"""
from __future__ import annotations

import struct

import matplotlib.text
import pytest

from pidutils import plots
from pidutils.cost import device_preset
from pidutils.data import SLOTS

MIN_PX = 12  # 9 pt in CSS pixels


def png_width(png: bytes) -> int:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", png[16:20])[0]


def shown_scale(fig) -> tuple[int, float]:
    """The PNG's width, and the scale the page shows it at (1 when it fits the column)."""
    width = png_width(plots.figure_png(fig))
    return width, min(1.0, plots.CONTENT_WIDTH_PX / width)


def small_texts(fig) -> list[str]:
    """Every visible, non-empty text of the drawn figure smaller than 12 px on the page."""
    width, scale = shown_scale(fig)  # draws the figure, as the book does
    small = []
    for text in fig.findobj(matplotlib.text.Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        px = text.get_fontsize() * plots.PNG_DPI / 72 * scale
        if px < MIN_PX:
            small.append(f"{text.get_text()[:30]!r}: {text.get_fontsize():.1f} pt, {px:.1f} px on the page")
    return small


def live_plot(logy: bool = False) -> plots.LivePlot:
    live = plots.LivePlot(xlabel="U (prompts per dialogue)", title="One dialogue: PIE vs PID", logy=logy)
    for U in (1, 5, 10, 20, 30):
        live.measured.setdefault("PIE", {})[U] = 8.0 * U
        live.predicted.setdefault("PIE", {})[U] = 7.0 * U
        for name, per in (("PID-copy", 0.5), ("PID-shared", 0.4)):
            live.measured.setdefault(name, {})[U] = 4.0 + per * U
            live.predicted.setdefault(name, {})[U] = 3.5 + per * U
    return live


WORDS = ["train-destination", ":", "peterborough", "train-day", ":", "saturday", "train-departure", ":",
         "stansted", "airport", "train-book", "people", ":", "6", "train-leaveat", ":", "09:30"]


def schedule(subsequences: int, length: int):
    """A pipelined schedule at Δt = 1 of ``subsequences`` subsequences of ``length`` tokens each."""
    tokens = [[WORDS[(i * 3 + j) % len(WORDS)] for j in range(length)] + ["</s>"] for i in range(subsequences)]
    made = [[i for i in range(subsequences) if 0 <= t - i <= length] for t in range(subsequences + length)]
    return tokens, made


def trace_rounds(count: int, gamma: int):
    rounds = []
    for k in range(count):
        guesses = [WORDS[(k * gamma + i) % len(WORDS)] for i in range(gamma)]
        stood = gamma if k % 3 == 0 else k % gamma
        rounds.append((guesses, stood, WORDS[(k + 7) % len(WORDS)]))
    rounds.append((["train-leaveat", ":", "09:30", "</s>"], 4, ""))
    return rounds


FIGURES = {
    "LivePlot": lambda: live_plot().draw(),
    "LivePlot, log y": lambda: live_plot(logy=True).draw(),
    "roofline": lambda: plots.roofline(device_preset("a100"), {"decode, batch 1": (0.5, 0.7e12),
                                                               "decode, batch 8": (3.9, 5e12),
                                                               "prefill, 64 tokens": (60, 90e12)}),
    "pie_pid_diagram": lambda: plots.pie_pid_diagram(U=3),
    "training_curve": lambda: plots.training_curve(
        [{"step": s, "jga": min(1, s / 3000), "slot_accuracy": min(1, 0.5 + s / 4000)} for s in range(500, 4001, 500)],
        "pid-t5-tiny on 50 validation dialogues while training"),
    "schedule_grid, Figure 2": lambda: plots.schedule_grid(
        [["A", "B", "C", "</s>"], ["D", "E", "</s>"], ["</s>"]], [[0], [0, 1], [0, 1, 2], [0, 1]],
        "Figure 2 redrawn: A B C <sep> D E at Δt = 1"),
    "schedule_grid, a test dialogue": lambda: plots.schedule_grid(
        *schedule(6, 3), "pipe-t5-tiny on test dialogue 19, Δt = 1"),
    "schedule_grid, 30 steps": lambda: plots.schedule_grid(*schedule(14, 16), "a long schedule"),
    "mask_matrix, Figure 3": lambda: plots.mask_matrix(
        [f"{t} {c}" for t, c in zip(["<bos>", "A", "<bos>", "B", "D", "<bos>", "C", "E"],
                                    [(0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (0, 3), (1, 3)])],
        [[k <= q for k in range(8)] for q in range(8)], [[abs(q - k) for k in range(8)] for q in range(8)],
        "Figure 3 redrawn: mask of Eq. (4) and Manhattan distances"),
    "mask_matrix, 16 tokens": lambda: plots.mask_matrix(
        [f"t{i} ({i // 4}, {i % 4})" for i in range(16)], [[k <= q for k in range(16)] for q in range(16)],
        [[q - k for k in range(16)] for q in range(16)], "sixteen tokens"),
    "speedup_curve": lambda: plots.speedup_curve(
        {n: 1 + 0.5 * n for n in range(2, 10)}, {n: 1 + 0.6 * n for n in range(2, 10)},
        "subsequences in the target", "Speed-up over sequential, b = 1, Δt = 1", paper={2: 1.8, 9: 5.1}),
    "medusa_diagram": lambda: plots.medusa_diagram(k=3),
    "medusa_diagram, 5 heads": lambda: plots.medusa_diagram(k=5),
    "candidate_tree": lambda: plots.candidate_tree(
        [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)], ["train-day", ":", "saturday", "monday", ";", ",", "train"],
        kinds=["root", "accepted", "stood", "accepted", "fell", "fell", "node"], title="one round"),
    "candidate_tree, 32 nodes": lambda: plots.candidate_tree(
        [(r,) for r in range(4)] + [(r, s) for r in range(2) for s in range(4)] + [(0, s, t) for s in range(3) for t in range(3)]
        + [(0, 0, t, u) for t in range(2) for u in range(3)] + [(0, 0, 0, 0, 0)],
        [WORDS[i % len(WORDS)] for i in range(33)]),
    "speculative_trace, chapter 5": lambda: plots.speculative_trace(
        trace_rounds(6, 5), "greedy speculative decoding, γ = 5, test dialogue 99"),
    "speculative_trace, γ = 8, 20 rounds": lambda: plots.speculative_trace(trace_rounds(20, 8), "γ = 8"),
    "prefix_layouts": lambda: plots.prefix_layouts(U=3),
    "compression_layouts": lambda: plots.compression_layouts(U=3, n_s=317, k=16),
    "compression_layouts, k = 1": lambda: plots.compression_layouts(U=5, n_s=455, k=1),
    "slot_heatmap, 30 slots": lambda: plots.slot_heatmap(
        [{"k": k, "slots": {slot: min(1.0, (i + 1) * k / 200) for i, slot in enumerate(SLOTS)}} for k in (4, 8, 16, 32, 64)],
        "each slot's accuracy against k (50 test dialogues, KL compressor)"),
    "k_curves": lambda: plots.k_curves({"CE objective": {4: 0.1, 16: 0.8, 64: 0.95}, "KL objective": {4: 0.2, 16: 0.9}},
                                       ylabel="test JGA (200 dialogues)", title="pid-t5-tiny with a compressed memory",
                                       target=0.9),
}


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_fits_the_column_with_9pt_text(name):
    fig = FIGURES[name]()
    width, _ = shown_scale(fig)
    assert width <= plots.CONTENT_WIDTH_PX, f"{name}: {width} px wide, the page shrinks it to {plots.CONTENT_WIDTH_PX}"
    assert small_texts(fig) == [], name


def test_a_wide_figure_is_caught():
    # The check itself: a figure 11 inches wide (as chapter 5's trace was) is shown shrunk, 9 pt text and all.
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 2))
    ax.text(0.5, 0.5, "guess", fontsize=9)
    plt.close(fig)
    width, scale = shown_scale(fig)
    assert width > plots.CONTENT_WIDTH_PX and scale < 0.8
    assert any("guess" in t for t in small_texts(fig))


def test_trace_rounds_wrap_instead_of_running_off_the_page():
    long = [(["peterborough"] * 8, 3, "stansted")]
    fig = plots.speculative_trace(long)
    ax = fig.axes[0]
    assert len(ax.patches) == 9 and ax.get_ylim()[0] >= 2  # one round on two lines or more
    assert [t.get_text() for t in ax.get_yticklabels()] == ["round 1"]  # the continuation is unlabelled
    with pytest.raises(ValueError, match="width must be in"):
        plots.speculative_trace(long, width=11.0)


def test_schedule_grid_keeps_every_cell_and_wraps_long_schedules_into_bands():
    tokens, made = schedule(14, 16)
    fig = plots.schedule_grid(tokens, made)
    assert len(fig.axes) >= 2
    drawn = sum(len(ax.patches) for ax in fig.axes)
    assert drawn == sum(len(subs) for subs in made)
    assert fig.axes[-1].get_xlabel() == "time-step"


def test_live_plot_log_axis():
    live = live_plot(logy=True)
    fig = live.draw()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 6  # measured and predicted for three series
    low, high = ax.get_ylim()
    assert 0 < low <= 4.2 and high >= 240
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert "10" in labels and "100" in labels and all("times" not in t and "^" not in t for t in labels)
    # a redraw keeps the log axis (ax.clear() resets the scale), and a plain plot stays linear
    live.add("PIE", 40, 320.0, 280.0)
    assert live.ax.get_yscale() == "log"
    assert live_plot().draw().axes[0].get_yscale() == "linear"


@pytest.mark.parametrize("y, predicted", [(0.0, 1.0), (-1.0, None), (1.0, 0.0), (float("nan"), None)])
def test_live_plot_log_axis_refuses_values_it_cannot_draw(y, predicted):
    live = plots.LivePlot(xlabel="U", logy=True)
    with pytest.raises(ValueError, match="log axis"):
        live.add("PIE", 1, y, predicted)
    assert live.measured == {}


def test_live_plot_logy_is_keyword_only_and_boolean():
    with pytest.raises(TypeError):
        plots.LivePlot("U", "ms", "title", True)
    with pytest.raises(ValueError, match="logy must be True or False"):
        plots.LivePlot("U", logy="yes")
