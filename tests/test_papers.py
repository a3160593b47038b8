"""Paper figures live once in pidutils.papers, and every chapter's paper-vs-book table draws from it;
tables render as HTML; listings show the lines that teach."""
from __future__ import annotations

import html
import json
import pathlib
import re

import pytest

from pidutils import papers
from pidutils.listing import listing, teaching_source
from pidutils.tables import Table

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
BIB = (pathlib.Path(__file__).parents[1] / "book" / "references.bib").read_text()
PAPER_CELL = re.compile(r'<td class="paper">(.*?)</td>')


def cells(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def comparison_cells(path: pathlib.Path) -> list[dict]:
    """The code cells of a chapter's "Paper vs this book" section."""
    found, inside = [], False
    for cell in cells(path):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.lstrip().startswith("#"):
            heading = source.lstrip().splitlines()[0]
            inside = "paper vs this book" in heading.lower() or (inside and not heading.startswith("## "))
        if inside and cell["cell_type"] == "code":
            found.append(cell)
    return found


COMPARED = [p for p in NOTEBOOKS if p.name[:2] in ("02", "03", "04", "05", "06", "07")]  # the chapters that quote papers


def test_the_chapters_that_quote_papers_are_all_checked():
    assert len(COMPARED) == 6


@pytest.mark.parametrize("path", COMPARED, ids=lambda p: p.stem)
def test_each_chapters_paper_column_comes_from_pidutils_papers(path):
    found = comparison_cells(path)
    assert found, f"{path.name}: no \"Paper vs this book\" section"
    assert any("papers.comparison(" in "".join(c["source"]) for c in found), \
        f"{path.name}: its paper-vs-book table is not made by papers.comparison"
    values = {q.value for q in papers.QUOTES.values()} | {"–"}
    shown = {html.unescape(v) for c in found for o in c.get("outputs", [])
             for v in PAPER_CELL.findall("".join(o.get("data", {}).get("text/html", "")))}
    assert shown, f"{path.name}: no saved paper column"
    assert shown <= values, f"{path.name}: paper figures not in pidutils.papers: {shown - values}"


def test_every_quote_names_a_source_of_the_bibliography_and_a_place():
    for key, q in papers.QUOTES.items():
        assert f"{{{q.source}," in BIB, key
        assert q.value and q.where and q.setting, key


def test_a_comparison_row_takes_its_paper_figure_and_reference_from_the_quote():
    table = papers.comparison([("speed-up", "pid.speedup", "2.0×"), ("ours only", "", "3")])
    assert table.rows[0] == ("speed-up", "1.9×", papers.quote("pid.speedup").reference, "2.0×")
    assert table.rows[1][1] == "–"
    assert PAPER_CELL.findall(table._repr_html_()) == ["1.9×", "–"]
    with pytest.raises(ValueError, match="key"):
        papers.comparison([("x", "no-such-figure", "1")])


def test_a_table_escapes_its_cells_and_refuses_ragged_rows():
    html = Table(("a", "b"), [("<1>", "x & y")])._repr_html_()
    assert "&lt;1&gt;" in html and "x &amp; y" in html
    with pytest.raises(ValueError, match="rows"):
        Table(("a", "b"), [("1",)])


def _example(x: int, *, y: int = 1) -> int:
    """A docstring the listing drops."""
    check_int("x", x, 0)  # noqa: F821 (never run: only listed)
    if y < 0:
        raise ValueError("y")
    total = x + y  # the line that teaches
    return total


def test_a_listing_drops_docstrings_and_argument_checks():
    source = teaching_source(_example)
    assert "docstring" not in source and "check_int" not in source and "raise" not in source
    assert "total = x + y  # the line that teaches" in source
    assert listing(_example).data.startswith("```python\ndef _example")
    with pytest.raises(ValueError, match="max_lines"):
        teaching_source(_example, max_lines=2)
    with pytest.raises(ValueError, match="objs"):
        listing()


def test_table_of_formats_rows_and_marks_a_missing_key():
    from pidutils.tables import table_of
    table = table_of([{"b": 1, "x": 0.5}, {"b": 8}], [("b", "b", "d"), ("x", "x", ".2f")])
    assert table.rows == [["1", "0.50"], ["8", "–"]]
