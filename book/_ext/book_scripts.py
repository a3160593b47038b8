"""A Sphinx extension for the book: every page loads each script once.

sphinx-thebe adds its inline settings script from an ``html-page-context`` handler, and Sphinx 7
keeps a script added there for every later page, so each page after the first would carry it
twice; the second copy's ``const THEBE_JS_URL`` is a SyntaxError in the reader's console. This
handler runs after the others and drops the repeats (same file, same attributes).
"""
from __future__ import annotations

from typing import Any


def drop_repeated_scripts(app, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    """Keep the first of scripts that share a file and attributes (an inline script's body included)."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", None) or "",
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app) -> dict[str, Any]:
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
