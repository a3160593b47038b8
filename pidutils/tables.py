"""Tables for the rendered book: rows of text as an HTML table that wraps (chapters 2 to 5).

A printed table wider than the page scrolls sideways in the built book and hides its last
columns; an HTML table wraps its cells to the page instead. :class:`Table` shows as HTML in
Jupyter and in the book, and as aligned plain text where no HTML is shown.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    """A header, rows of cells (text) and an optional caption; ``classes[j]`` names column j's
    cells in the HTML (``<td class="...">``), so a test can find one column."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""
    classes: Sequence[str] = field(default=())

    def __post_init__(self) -> None:
        widths = {len(row) for row in self.rows} | {len(self.header)}
        if len(widths) != 1:
            raise ValueError(f"rows must each have {len(self.header)} cells, as the header does; got {sorted(widths)}")

    def _cell(self, tag: str, j: int, text: str) -> str:
        cls = f' class="{self.classes[j]}"' if j < len(self.classes) and self.classes[j] else ""
        return f"<{tag}{cls}>{html.escape(str(text))}</{tag}>"

    def _repr_html_(self) -> str:
        head = "".join(self._cell("th", j, h) for j, h in enumerate(self.header))
        body = "".join("<tr>" + "".join(self._cell("td", j, c) for j, c in enumerate(row)) + "</tr>"
                       for row in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f'<table class="pidutils-table">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __repr__(self) -> str:
        lines = [self.header, *self.rows]
        widths = [max(len(str(line[j])) for line in lines) for j in range(len(self.header))]
        text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        return "\n".join(([self.caption] if self.caption else []) + text)


def table_of(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], *, caption: str = "") -> Table:
    """Result rows (dicts, as the experiments and measurements return them) as a :class:`Table`:
    ``columns`` lists ``(key, header, format)``, the format a ``format()`` spec such as ``".2f"``
    (``""``: the value as it is); a row without the key shows "–" (a way not timed in that row).
    Every chapter formats its rows through it, and computes nothing."""
    return Table([header for _, header, _ in columns],
                 [[format(row[key], spec) if key in row else "–" for key, _, spec in columns] for row in rows], caption)
