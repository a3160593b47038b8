"""Code listings for the chapters: the lines of a pidutils function that teach (every chapter).

A chapter shows the code it is about from pidutils itself, so there is one source of truth, but
not all of it: :func:`listing` drops the docstring and the argument checks (calls of a
``check_*`` function, and ``if ...: raise ...`` guards), which every public function has and no
chapter is about, and refuses a listing longer than ``max_lines``.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable

from IPython.display import Markdown

MAX_LINES = 25


def _is_check(node: ast.stmt) -> bool:
    """An argument check: ``check_x(...)``, ``module.check_x(...)``, or ``if ...: raise ...``."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name.startswith(("check_", "_check"))
    return isinstance(node, ast.If) and not node.orelse and all(isinstance(s, ast.Raise) for s in node.body)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _dropped_lines(tree: ast.AST) -> set[int]:
    """Line numbers (1-based, in the parsed source) of docstrings and argument checks."""
    dropped = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list) or not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            continue
        for i, stmt in enumerate(body):
            if (i == 0 and _is_docstring(stmt)) or _is_check(stmt):
                dropped.update(range(stmt.lineno, stmt.end_lineno + 1))
    return dropped


def teaching_source(obj: Callable | type, *, max_lines: int = MAX_LINES) -> str:
    """``obj``'s source without its docstrings and argument checks; ``ValueError`` if still over ``max_lines``."""
    source = textwrap.dedent(inspect.getsource(obj))
    dropped = _dropped_lines(ast.parse(source))
    kept = [line for number, line in enumerate(source.splitlines(), 1) if number not in dropped]
    if len(kept) > max_lines:
        raise ValueError(f"max_lines: the listing of {obj.__qualname__} has {len(kept)} lines, more than "
                         f"max_lines = {max_lines}; show a smaller function")
    return "\n".join(kept)


def listing(*objs: Callable | type, max_lines: int = MAX_LINES) -> Markdown:
    """The teaching source of each of ``objs`` (:func:`teaching_source`), as one highlighted code block."""
    if not objs:
        raise ValueError("objs: give at least one function or class to list")
    code = "\n\n".join(teaching_source(obj, max_lines=max_lines) for obj in objs)
    return Markdown(f"```python\n{code}\n```")
