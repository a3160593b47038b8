"""Colab as the book promises: installing pidutils there reinstalls nothing Colab already has.

Colab's versions are pinned in requirements-colab.txt (`make test-colab` runs the widget tests and
every chapter in them); these tests check that pidutils' install ranges admit every one of them,
so that the setup cell's `pip install` leaves torch, transformers, datasets, matplotlib and
ipywidgets 7.7.1 as they are.
"""
import pathlib
import sys

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from sync_setup_cells import setup_cell_source  # noqa: E402

# Colab's torch (googlecolab/backend-info, August 2026). requirements-colab.txt installs the CPU
# build 2.13.0 instead, since CI has no GPU; pidutils' range must admit both.
COLAB_TORCH = "2.11.0"


def colab_versions() -> dict[str, str]:
    """The pinned ``name==version`` lines of requirements-colab.txt, and Colab's torch."""
    pins = {"torch": COLAB_TORCH}
    for line in (ROOT / "requirements-colab.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            req = Requirement(line)
            pins[req.name] = str(next(iter(req.specifier)).version)
    return pins


def pyproject_requirements() -> list[Requirement]:
    import tomllib
    return [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]


def test_colab_pins_name_what_the_issue_lists():
    assert {"torch", "transformers", "datasets", "matplotlib", "ipywidgets"} <= set(colab_versions())
    assert colab_versions()["ipywidgets"] == "7.7.1"


@pytest.mark.parametrize("source", ["pyproject.toml", "requirements.txt"])
def test_every_range_admits_colabs_version(source):
    if source == "pyproject.toml":
        requirements = pyproject_requirements()
    else:
        lines = (ROOT / source).read_text().splitlines()
        requirements = [Requirement(x) for x in (l.split("#")[0].strip() for l in lines) if x]
    pins = colab_versions()
    checked = [r.name for r in requirements if r.name in pins]
    assert {"torch", "transformers", "datasets", "matplotlib", "ipywidgets"} <= set(checked), source
    for r in requirements:
        if r.name in pins:
            assert r.specifier.contains(pins[r.name], prereleases=True), f"{source}: {r} would replace Colab's {pins[r.name]}"


def test_setup_cell_installs_pidutils_only_and_no_custom_widget_manager():
    cell = setup_cell_source()
    assert "enable_custom_widget_manager" not in cell
    installs = [line for line in cell.splitlines() if "pip install" in line]
    assert len(installs) == 1 and "pidutils @ git+" in installs[0]
    assert "--upgrade" not in installs[0] and "-U " not in installs[0] and "torch" not in installs[0]


def test_the_widgets_in_use_exist_in_ipywidgets_7_and_8():
    import ipywidgets

    from pidutils import plots, widgets
    panel = widgets.slider_panel(lambda **v: None, U=(1, 30, 1, 5))
    assert isinstance(panel.controls["U"], ipywidgets.IntSlider) and isinstance(panel.box, ipywidgets.VBox)
    assert isinstance(plots.LivePlot(xlabel="U").output, ipywidgets.Output)
    assert ipywidgets.__version__.split(".")[0] in ("7", "8")
