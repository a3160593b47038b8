"""The package's shape, read from its source (GUIDE section 1, ``pidutils/__init__.py``'s docstring).

Every module of pidutils sits on a floor and imports only from its own floor and the floors below;
the decoding methods are siblings on one floor and never import each other (what two of them need
lives in the engine, floor 3); a pidutils import inside a function says on its line why (an import
cycle), since it hides an edge from a reader of the module's head; and every module is placed on a
floor, so that a new one cannot slip in unplaced. ``pidutils/__init__.py`` re-exports everything
and is exempt as an importer (nothing inside the package may import it).

The imports are read with :mod:`ast`, at module level and inside functions, with relative imports
resolved against the importing module's package.
"""
from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

import pidutils

PACKAGE = pathlib.Path(next(iter(pidutils.__path__)))

# The decoding methods: siblings that never import each other. A new method joins this list.
METHODS = ("decode", "pie", "pid", "pipelined", "speculative", "medusa", "shared_prefix", "compression")

FLOORS: dict[str, int] = {
    # 1: argument checks, the papers' formulas and figures, tables
    "checks": 1, "cost": 1, "papers": 1, "tables": 1,
    # 2: data, tokenizer, models, metrics, training loop, timers, plots, widgets, listings, checkpoints
    "data": 2, "tokenizer": 2, "models": 2, "metrics": 2, "train": 2, "bench": 2, "plots": 2, "widgets": 2,
    "listing": 2, "zoo": 2,
    # 3: the engine
    "batching": 3, "t5": 3, "sequential": 3, "causal": 3,
    # 4: the methods
    **dict.fromkeys(METHODS, 4),
    # 5: measurements
    "multiprompt": 5, "measure": 5, "prefixes": 5, "memories": 5, "drafts": 5, "distribution": 5, "trees": 5,
    "zoo.training": 5,
    # 6: the experiments
    "experiments": 6,
    # 7: the command lines
    "bench.__main__": 7, "zoo.__main__": 7,
}
ROOT = ""  # pidutils/__init__.py: it imports every module, so no module may import it
EXEMPT = {ROOT}


def module_name(path: pathlib.Path) -> str:
    """``pidutils/zoo/training.py`` -> ``zoo.training``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, pathlib.Path]:
    """Every module of pidutils on disk, by name (the root package as ``""``)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(module: str, modules) -> bool:
    """Whether ``module`` is a package (its own ``__init__.py``): the root, or a name with submodules."""
    return module == ROOT or any(m.startswith(module + ".") for m in modules)


@dataclass(frozen=True)
class Edge:
    """One import of a pidutils module: who imports what, on which line, and whether inside a function."""

    importer: str
    imported: str
    line: int
    in_function: bool
    comment: str


def resolve(importer: str, node: ast.Import | ast.ImportFrom, modules) -> list[str]:
    """The pidutils modules an import statement of ``importer`` names (none for third-party imports).

    ``from . import a, b`` names the modules ``a`` and ``b`` where they are modules, and the
    package itself for any other name (``from . import RECIPES`` in ``zoo.training``: ``zoo``).
    """
    def longest_module(dotted: str) -> str | None:
        parts = dotted.split(".") if dotted else []
        for end in range(len(parts), -1, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    if isinstance(node, ast.Import):
        found = []
        for alias in node.names:
            if alias.name == "pidutils" or alias.name.startswith("pidutils."):
                found.append(longest_module(alias.name.removeprefix("pidutils").lstrip(".")))
        return [m for m in found if m is not None]
    if node.level == 0:
        if node.module != "pidutils" and not (node.module or "").startswith("pidutils."):
            return []
        base = node.module.removeprefix("pidutils").lstrip(".")
    else:
        package = importer if is_package(importer, modules) else importer.rpartition(".")[0]
        parts = package.split(".") if package else []
        if node.level - 1 > len(parts):
            raise ValueError(f"{importer}: a relative import above the package, line {node.lineno}")
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    target = longest_module(base)
    if target is None:
        return []
    names = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        names.append(sub if base == target and sub in modules else target)
    return sorted(set(names))


def edges(importer: str, source: str, modules) -> list[Edge]:
    """Every pidutils import in ``source`` (module ``importer``), at module level and inside functions."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                text = "\n".join(lines[child.lineno - 1:child.end_lineno])
                comment = text.partition("#")[2].strip() if "#" in text else ""
                found.extend(Edge(importer, m, child.lineno, in_function, comment)
                             for m in resolve(importer, child, modules))
            visit(child, inside)

    visit(tree, False)
    return found


def violations(importer: str, source: str, *, floors: dict[str, int] = FLOORS,
               methods: tuple[str, ...] = METHODS, modules=None) -> list[str]:
    """What is wrong with the imports of module ``importer`` whose text is ``source``, one line each."""
    modules = set(package_modules()) if modules is None else set(modules)
    modules |= {importer}
    if importer in EXEMPT:
        return []
    if importer not in floors:
        return [f"{importer} is on no floor: place it in FLOORS (tests/test_architecture.py) and in "
                f"pidutils/__init__.py's docstring"]
    problems = []
    for edge in edges(importer, source, modules):
        where = f"{importer}, line {edge.line}"
        if edge.imported == importer:
            continue
        if edge.imported == ROOT:
            problems.append(f"{where}: imports the package root pidutils, which imports every module")
            continue
        if edge.imported not in floors:
            problems.append(f"{where}: imports {edge.imported}, which is on no floor")
            continue
        if importer in methods and edge.imported in methods:
            problems.append(f"{where}: the method {importer} imports the method {edge.imported}; "
                            f"what both need belongs in the engine (floor 3)")
        if floors[edge.imported] > floors[importer]:
            problems.append(f"{where}: {importer} (floor {floors[importer]}) imports {edge.imported} "
                            f"(floor {floors[edge.imported]}), a floor above its own")
        if edge.in_function and "cycle" not in edge.comment.lower():
            problems.append(f"{where}: imports {edge.imported} inside a function without a comment on "
                            f"the line saying why (an import cycle)")
    return problems


# --- The package as it is --------------------------------------------------------------------------------

def test_every_module_is_on_a_floor():
    unplaced = sorted(m for m in package_modules() if m not in FLOORS and m not in EXEMPT)
    assert unplaced == [], f"place these modules on a floor: {unplaced}"
    assert sorted(m for m in FLOORS if m not in package_modules()) == []  # no floor for a module that is gone


def test_the_map_knows_every_method():
    assert all(FLOORS[m] == 4 for m in METHODS)
    assert sorted(m for m, floor in FLOORS.items() if floor == 4) == sorted(METHODS)


@pytest.mark.parametrize("module", sorted(m for m in package_modules() if m not in EXEMPT))
def test_imports_go_down_and_methods_stay_apart(module):
    path = package_modules()[module]
    assert violations(module, path.read_text()) == []


def test_the_checker_reads_the_real_imports():
    """The checker sees the edges the package has (so a clean run is not a blind one)."""
    modules = package_modules()
    found = {(e.importer, e.imported) for m, p in modules.items() if m != ROOT
             for e in edges(m, p.read_text(), modules)}
    for edge in [("pie", "t5"), ("pid", "batching"), ("speculative", "sequential"), ("measure", "zoo"),
                 ("zoo.training", "pid"), ("zoo.training", "zoo"), ("zoo.__main__", "drafts"),
                 ("bench.__main__", "experiments"), ("experiments", "drafts"), ("bench", "checks")]:
        assert edge in found, edge


# --- The checker catches what it must ------------------------------------------------------------------

PLANTED = "from .pid import prompt_ids\n"


def test_a_method_importing_a_method_is_caught():
    problems = violations("pie", PLANTED)
    assert problems == ["pie, line 1: the method pie imports the method pid; what both need belongs in the "
                        "engine (floor 3)"]
    print("\n".join(problems))  # the report, for the record (pytest -s)
    assert violations("pie", "import pidutils.pipelined as pl\n")[0].startswith("pie, line 1: the method pie")
    assert violations("speculative", "from pidutils import decode\n") != []
    # a future method joins the list and is held to the same rule
    assert violations("medusa", "from .speculative import accept\n", floors=FLOORS | {"medusa": 4},
                      methods=METHODS + ("medusa",), modules=set(FLOORS) | {"medusa"}) != []


def test_an_import_from_a_floor_above_is_caught():
    assert violations("t5", "from .measure import Testbed\n") == [
        "t5, line 1: t5 (floor 3) imports measure (floor 5), a floor above its own"]
    assert violations("cost", "from . import models\n") != []  # floor 1 reaching floor 2
    assert violations("zoo", "from ..experiments import EXPERIMENTS\n") != []
    assert violations("measure", "from .drafts import DRAFTS\n") == []  # the same floor is allowed
    assert violations("measure", "import pidutils\n") != []  # the root imports everything


def test_an_import_inside_a_function_needs_a_comment_naming_the_cycle():
    hidden = "def f():\n    from .pie import pie_loop\n    return pie_loop\n"
    assert violations("measure", hidden) == [
        "measure, line 2: imports pie inside a function without a comment on the line saying why (an import cycle)"]
    said = "def f():\n    from .pie import pie_loop  # a cycle: pie imports measure\n"
    assert violations("measure", said) == []
    # a method imported inside a function is still a method importing a method
    assert any("the method pid imports the method pie" in p
               for p in violations("pid", "def f():\n    from . import pie  # cycle\n"))
    # third-party imports inside functions are not the package's edges
    assert violations("bench", "def f():\n    from torch.profiler import profile\n") == []


def test_an_unplaced_module_is_caught():
    assert violations("newmethod", "from .t5 import greedy\n")[0].startswith("newmethod is on no floor")


@pytest.mark.parametrize("importer, line, imported", [
    ("measure", "from . import zoo, data\n", ["data", "zoo"]),
    ("experiments", "from . import drafts, measure, zoo\n", ["drafts", "measure", "zoo"]),
    ("zoo.training", "from ..pid import pid_batches\n", ["pid"]),
    ("zoo.training", "from . import RECIPES, load\n", ["zoo"]),
    ("zoo.__main__", "from .training import train_checkpoint\n", ["zoo.training"]),
    ("zoo", "from ..data import make_split\n", ["data"]),
    ("zoo", "from . import training\n", ["zoo.training"]),
    ("pie", "from .t5 import greedy, start_tokens\n", ["t5"]),
    ("pie", "from .zoo.training import predictor\n", ["zoo.training"]),
    ("pie", "from .zoo import training, RECIPES\n", ["zoo", "zoo.training"]),
    ("pie", "import pidutils.bench.__main__\n", ["bench.__main__"]),
    ("pie", "from pidutils.t5 import greedy\n", ["t5"]),
    ("pie", "from pidutils import t5, data\n", ["data", "t5"]),
    ("bench.__main__", "from ..experiments import EXPERIMENTS\n", ["experiments"]),
    ("bench", "from ..cost import Device\n", ["cost"]),
    ("pie", "from . import Table\n", [ROOT]),  # a name of the package root: the root itself
    ("pie", "import torch\nfrom transformers import T5Config\n", []),
])
def test_relative_imports_are_resolved(importer, line, imported):
    modules = set(package_modules())
    assert sorted(e.imported for e in edges(importer, line, modules)) == imported
