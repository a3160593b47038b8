"""Slider panels whose callback is a plain Python function (used by every chapter's measurements).

Moving a slider, or picking one of a row of choices, calls ``callback(**values)``. Tests and readers without a browser do the same by
setting ``panel.controls[name].value`` or by calling ``panel.callback`` directly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets

from .checks import check_int


@dataclass
class Panel:
    """Sliders (and choices), the function they drive, and the box that shows them."""

    controls: dict[str, widgets.ValueWidget]
    callback: Callable[..., object]
    box: widgets.VBox

    def values(self) -> dict[str, object]:
        """The controls' current values, by name."""
        return {name: c.value for name, c in self.controls.items()}

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.box)


class PanelBox(widgets.VBox):
    """The panel's box, whose plain-text form names its controls instead of dumping every trait
    (that form is what a notebook saves beside the widget, and what a page without widgets shows)."""

    def __repr__(self) -> str:
        return "slider panel: " + ", ".join(c.description for c in self.children)


def slider_panel(callback: Callable[..., object], **ranges: tuple[int, int, int, int] | list) -> Panel:
    """A panel with one integer slider per keyword given as ``name=(min, max, step, value)``, and one
    row of buttons per keyword given as a list of choices, ``name=[first, second, ...]`` (the first
    is picked).

    The callback runs whenever a slider is released at a new value (``continuous_update=False``) or
    another choice is picked, with every control's value as keyword arguments.
    """
    if not ranges:
        raise ValueError("ranges must define at least one slider, as name=(min, max, step, value)")
    controls = {name: choice_buttons(name, spec) if isinstance(spec, list) else int_slider(name, *spec)
                for name, spec in ranges.items()}
    panel = Panel(controls, callback, PanelBox(list(controls.values())))
    for control in controls.values():
        control.observe(lambda change: callback(**panel.values()), names="value")
    return panel


def int_slider(name: str, low: int, high: int, step: int, value: int) -> widgets.IntSlider:
    """A labelled integer slider that reports only when released."""
    check_int(f"{name} min", low, 0)
    check_int(f"{name} max", high, low)
    check_int(f"{name} step", step, 1)
    check_int(f"{name} value", value, low, high)
    return widgets.IntSlider(value=value, min=low, max=high, step=step, description=name, continuous_update=False)


def choice_buttons(name: str, options: list) -> widgets.ToggleButtons:
    """A labelled row of buttons, one per option, the first picked."""
    if not options:
        raise ValueError(f"{name} must list at least one choice")
    return widgets.ToggleButtons(options=options, value=options[0], description=name)


def latency_panel(measure: Callable[..., tuple[float, float]], plot, series: str, x: str,
                  **ranges: tuple[int, int, int, int]) -> Panel:
    """A slider panel that measures one point per move and adds it to a :class:`~pidutils.plots.LivePlot`.

    ``measure(**values)`` returns ``(measured_s, predicted_s)``; the point goes to the series named
    ``series.format(**values)`` at ``values[x]``, in milliseconds.
    """
    if x not in ranges:
        raise ValueError(f"x must name one of the sliders {sorted(ranges)}, got {x!r}")

    def measure_and_plot(**values: int) -> tuple[float, float]:
        measured, predicted = measure(**values)
        plot.add(series.format(**values), values[x], measured * 1e3, predicted * 1e3)
        return measured, predicted

    return slider_panel(measure_and_plot, **ranges)
