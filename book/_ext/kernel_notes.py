"""A Sphinx extension for the book: a note above each slider panel that it needs a running kernel.

The rendered book shows every widget from the state saved with its chapter, so a slider panel looks
live, but no kernel runs behind it: moving a slider measures nothing. This extension finds each
widget view in a chapter's outputs whose saved model holds a control (a slider, a row of buttons, a
dropdown ...), and puts a note in the HTML just before it, pointing to the Colab launch button at
the top of the page (and linking to the same URL). The note exists only in the built HTML, never in
the notebook, so Jupyter and Colab do not show it. Live plots (``Output`` widgets holding a PNG) have
no control and get no note: they show their last saved state, which is what they are for.

``tests/browser/test_rendered_book.py`` checks that every slider panel has its note, visible.
"""
from __future__ import annotations

import html
import json
import pathlib
import re
from typing import Any

from docutils import nodes

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Models a reader would move or press: a view holding any of them is a panel that needs a kernel.
CONTROL_MODELS = frozenset({
    "IntSliderModel", "FloatSliderModel", "FloatLogSliderModel", "IntRangeSliderModel",
    "FloatRangeSliderModel", "SelectionSliderModel", "SelectionRangeSliderModel", "ToggleButtonsModel",
    "ToggleButtonModel", "DropdownModel", "RadioButtonsModel", "SelectModel", "SelectMultipleModel",
    "CheckboxModel", "ButtonModel", "IntTextModel", "FloatTextModel", "BoundedIntTextModel",
    "BoundedFloatTextModel", "TextModel", "TextareaModel", "PlayModel",
})
MODEL_ID = re.compile(r'"model_id"\s*:\s*"([^"]+)"')
NOTE_CLASS = "kernel-note"


def widget_state(path: pathlib.Path) -> dict[str, dict]:
    """The widget models saved with a notebook, by id (empty for anything else)."""
    if path.suffix != ".ipynb" or not path.exists():
        return {}
    nb = json.loads(path.read_text(encoding="utf-8"))
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def needs_kernel(model_id: str, state: dict[str, dict], seen: frozenset = frozenset()) -> bool:
    """Whether the widget ``model_id``, or any widget it holds, is a control."""
    model = state.get(model_id)
    if model is None or model_id in seen:
        return False
    if model.get("model_name") in CONTROL_MODELS:
        return True
    children = model.get("state", {}).get("children", [])
    return any(needs_kernel(str(c).removeprefix("IPY_MODEL_"), state, seen | {model_id}) for c in children)


def colab_url(app, docname: str) -> str | None:
    """The page's Colab launch URL, built as sphinx-book-theme builds its launch button's."""
    options = app.config.html_theme_options or {}
    colab = (options.get("launch_buttons") or {}).get("colab_url")
    repository = (options.get("repository_url") or "").rstrip("/")
    if not colab or not repository.startswith("https://github.com/"):
        return None
    branch = options.get("repository_branch") or "main"
    folder = (options.get("path_to_docs") or "").strip("/")
    path = pathlib.PurePosixPath(app.env.doc2path(docname, base=False))
    if folder:
        path = pathlib.PurePosixPath(folder) / path
    return f"{colab.rstrip('/')}/github/{repository.removeprefix('https://github.com/')}/blob/{branch}/{path}"


def note_html(url: str | None) -> str:
    """The note's HTML: an admonition, styled by the theme (and book/static/book.css)."""
    here = f', or with <a class="reference external" href="{html.escape(url)}">this link</a>,' if url else ""
    return (f'<div class="{NOTE_CLASS} admonition note" role="note">'
            '<p class="admonition-title">This panel needs a running kernel</p>'
            "<p>On this page the controls below show the values saved when the chapter was last run, "
            "and moving them runs nothing. To measure with them, open the chapter in Colab with the "
            'launch button at the top of the page (<i class="fas fa-rocket"></i> Colab)'
            f"{here} and run its cells.</p></div>\n")


def add_kernel_notes(app, doctree: nodes.document, docname: str) -> None:
    """Put the note before each widget view of ``docname`` that holds a control (HTML builders only)."""
    if app.builder.format != "html":
        return
    state = widget_state(pathlib.Path(app.env.doc2path(docname)))
    if not state:
        return
    note = note_html(colab_url(app, docname))
    for node in list(doctree.findall(nodes.raw)):
        if "html" not in node.get("format", "").split() or WIDGET_VIEW not in node.astext():
            continue
        if any(needs_kernel(model_id, state) for model_id in MODEL_ID.findall(node.astext())):
            node.parent.insert(node.parent.index(node), nodes.raw("", note, format="html"))


def setup(app) -> dict[str, Any]:
    app.connect("doctree-resolved", add_kernel_notes)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
