"""The book's structure: the toc, the setup cells, executed notebooks, ignored timing cells."""
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from sync_setup_cells import setup_cell_source  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_every_chapter_is_in_the_toc_and_the_toc_files_exist():
    toc = (ROOT / "_toc.yml").read_text()
    assert NOTEBOOKS
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in toc
    for entry in yaml.safe_load(toc)["parts"]:
        for chapter in entry["chapters"]:
            assert list(ROOT.glob(chapter["file"] + ".*")), chapter["file"]


def test_jupyter_book_config_has_colab_and_bibliography():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"].startswith("https://colab")
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    bib = (ROOT / config["bibtex_bibfiles"][0]).read_text()
    for key in ("lu2024encode", "huang2025pipelined", "leviathan2023fast", "cai2024medusa"):
        assert key in bib


def test_setup_cells_read_the_repository_from_config():
    for nb in NOTEBOOKS:
        assert "".join(_code_cells(nb)[0]["source"]) == setup_cell_source(), nb.name


def test_notebooks_are_executed_in_order_with_widget_state():
    for nb in NOTEBOOKS:
        counts = [c["execution_count"] for c in _code_cells(nb)]
        assert counts == list(range(1, len(counts) + 1)), nb.name
        assert "application/vnd.jupyter.widget-state+json" in json.loads(nb.read_text())["metadata"]["widgets"]


def test_every_saved_figure_is_a_png():
    # A kernel under a non-interactive backend saves figures as the text '<Figure size ...>' alone,
    # which nbval accepts and the rendered book shows as text (pidutils.plots.show_figures_as_png).
    for nb in NOTEBOOKS:
        book = json.loads(nb.read_text())
        outputs = [o for c in _code_cells(nb) for o in c.get("outputs", [])]
        state = book["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        outputs += [o for m in state.values() if m["model_name"] == "OutputModel" for o in m["state"]["outputs"]]
        for output in outputs:
            data = output.get("data", {})
            if "".join(data.get("text/plain", "")).startswith("<Figure size"):
                assert "image/png" in data, nb.name
        live = [m for m in state.values() if m["model_name"] == "OutputModel"]
        assert live and all(list(m["state"]["outputs"][-1]["data"]) == ["image/png"] for m in live), nb.name


def test_the_book_loads_no_script_from_a_cdn():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = config["sphinx"]
    assert sphinx["config"]["nb_ipywidgets_js"] == {}  # MyST-NB's default loads them from CDNs
    assert "sphinx-mathjax-offline" in sphinx["extra_extensions"]
    static = ROOT / sphinx["config"]["html_static_path"][0]
    scripts = [s if isinstance(s, str) else s[0] for s in sphinx["config"]["html_js_files"]]
    assert scripts == ["widgets/setup.js", "widgets/require.js", "widgets/embed-amd.js"]
    assert all((static / s).stat().st_size > 0 for s in scripts)
    assert config["execute"]["execute_notebooks"] == "off"  # the book shows the outputs nbval checks


def test_timing_cells_are_ignored_by_nbval():
    for nb in NOTEBOOKS:
        for cell in _code_cells(nb):
            src = "".join(cell["source"])
            if any(f"{word}(" in src for word in ("compare", "time_fn", "measure_device", "latency",
                                                   "decode_cache", "callback", "time_methods")):
                assert "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []), src[:80]
