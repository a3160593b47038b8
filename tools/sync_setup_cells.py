"""Write every chapter's Colab setup cell from the repository URL in _config.yml.

_config.yml is the one place the repository is named; `python tools/sync_setup_cells.py` rewrites
the first code cell of each notebook to match it, and tests/test_book.py checks that they do.
"""
from __future__ import annotations

import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = "# Setup (the same in every chapter)"


def setup_cell_source(config_path: pathlib.Path = ROOT / "_config.yml") -> str:
    """The setup cell: on Colab, install pidutils from the book's repository; nothing else.

    Colab's own widget manager renders the book's sliders and live plots (core ipywidgets 7.7.1
    widgets), so no custom widget manager is enabled.
    """
    repo = yaml.safe_load(config_path.read_text())["repository"]
    url, branch = repo["url"].rstrip("/"), repo.get("branch", "main")
    return (
        f"{MARKER}: on Colab, install the book's helper package, pidutils, from\n"
        "# its repository, and nothing Colab already has (torch above all). Elsewhere: nothing.\n"
        "import sys\n"
        "\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    !pip install -q \"pidutils @ git+{url}@{branch}\""
    )


def sync(path: pathlib.Path) -> bool:
    """Rewrite the setup cell of one notebook; return True if it changed."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    new = setup_cell_source()
    if "".join(cell["source"]) == new:
        return False
    cell["source"] = new.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


if __name__ == "__main__":
    changed = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if sync(p)]
    print("updated:", *changed) if changed else print("all setup cells match _config.yml")
    sys.exit(0)
