"""Widget callbacks are plain functions: move the sliders without a browser."""
import pytest
import torch

from pidutils import bench, plots, widgets
from pidutils.experiments import decode_latency


def test_setting_a_slider_calls_the_callback_with_all_values():
    seen = []
    panel = widgets.slider_panel(lambda **v: seen.append(v), U=(1, 30, 1, 5), gamma=(1, 8, 1, 4))
    panel.controls["U"].value = 12
    panel.controls["gamma"].value = 2
    assert seen == [{"U": 12, "gamma": 4}, {"U": 12, "gamma": 2}]
    assert panel.values() == {"U": 12, "gamma": 2}


def test_a_row_of_choices_calls_the_callback_too():
    seen = []
    panel = widgets.slider_panel(lambda **v: seen.append(v), gamma=(1, 8, 1, 4), temperature=[0.0, 1.0])
    assert panel.values() == {"gamma": 4, "temperature": 0.0}
    panel.controls["temperature"].value = 1.0
    panel.controls["gamma"].value = 6
    assert seen == [{"gamma": 4, "temperature": 1.0}, {"gamma": 6, "temperature": 1.0}]


def test_chapter1_latency_panel_measures_and_plots(tiny_model):
    roof = bench.measure_device("cpu", size=128, megabytes=8)
    live = plots.LivePlot(xlabel="generated tokens")

    def measure(batch, new_tokens):
        return decode_latency(tiny_model, torch.device("cpu"), roof, batch, new_tokens, repeats=1)

    panel = widgets.latency_panel(measure, live, series="batch {batch}", x="new_tokens",
                                  batch=(1, 16, 1, 1), new_tokens=(8, 64, 8, 8))
    for batch, tokens in ((1, 16), (4, 16), (4, 24)):
        panel.controls["batch"].value = batch
        panel.controls["new_tokens"].value = tokens
    assert set(live.measured) == {"batch 1", "batch 4"}
    assert sorted(live.measured["batch 4"]) == [16, 24]
    assert all(live.predicted["batch 4"][x] < live.measured["batch 4"][x] for x in (16, 24))
    fig = live.draw()
    assert len(fig.axes[0].lines) == 4  # measured and predicted, for two series


def test_roofline_figure_has_the_points():
    from pidutils.cost import device_preset
    fig = plots.roofline(device_preset("a100"), {"decode": (0.5, 0.7e12), "prefill": (60, 90e12)})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "decode" in labels and "prefill" in labels


@pytest.mark.parametrize("call, match", [
    (lambda: widgets.slider_panel(print), "ranges must define"),
    (lambda: widgets.slider_panel(print, U=(1, 30, 1, 0)), "U value must be in"),
    (lambda: widgets.slider_panel(print, U=(5, 1, 1, 3)), "U max must be in"),
    (lambda: widgets.slider_panel(print, T=[]), "T must list at least one choice"),
    (lambda: widgets.latency_panel(print, None, "s", "V", U=(1, 3, 1, 1)), "x must name one of"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_training_curve_draws_slot_accuracy_jga_and_the_target():
    fig = plots.training_curve([{"step": 500, "jga": 0.1, "slot_accuracy": 0.8},
                                {"step": 1000, "jga": 0.95, "slot_accuracy": 0.99}], "run")
    lines = fig.axes[0].get_lines()
    assert [tuple(line.get_ydata()) for line in lines[:2]] == [(0.8, 0.99), (0.1, 0.95)]
    assert tuple(lines[2].get_ydata()) == (0.9, 0.9)


def test_figures_display_as_png_under_a_non_interactive_backend():
    # pytest runs matplotlib's Agg backend, as `MPLBACKEND=Agg` did in the kernel that built the book
    # and left the text '<Figure size ...>' where each figure belonged.
    import matplotlib
    from IPython.core.interactiveshell import InteractiveShell
    assert matplotlib.get_backend().lower() == "agg"
    shell = InteractiveShell.instance()
    plots.show_figures_as_png(shell)
    fig = plots.training_curve([{"step": 1, "jga": 0.5, "slot_accuracy": 0.9}], "run")
    data, _ = shell.display_formatter.format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.figure_png(fig) == data["image/png"]


def test_live_plot_draws_every_point_and_its_prediction():
    live = plots.LivePlot(xlabel="U")
    for x, y, p in ((1, 3.0, 2.0), (5, 9.0, 7.0)):
        live.add("PID", x, y, p)
    (measured, predicted) = live.draw().axes[0].get_lines()
    assert list(measured.get_ydata()) == [3.0, 9.0] and list(predicted.get_ydata()) == [2.0, 7.0]
    assert plots.figure_png(live.fig)[:4] == b"\x89PNG"
