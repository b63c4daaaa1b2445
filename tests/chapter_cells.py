"""Run the chapter's code cells for one framework, in order, as a fresh notebook would, and print what each
cell showed as JSON; ``tests/test_chapter.py`` runs it in a fresh process per backend and way:

    python tests/chapter_cells.py <backend> <book|package>

The cells are the book's (``tests/fixtures/d2l-resnet-chapter.md``), with ``from d2l import <framework> as d2l``
replaced by ``from resnet.d2l import <framework> as d2l``. ``book`` runs every cell of the framework's tab,
defining the chapter's own classes on the stand-in d2l; ``package`` runs the same cells with this package's
``Residual``, ``ResNeXtBlock``, ``ResNet`` and ``ResNet18`` in place of the cells that define them. The only
other changes (``ADAPTATIONS``): d2lbook's tab-selection cell, whose ``tab.selected`` is given by this runner,
the training cell's size, and one Keras 2 call that Keras 3 refuses.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAPTER = Path(__file__).parent / "fixtures" / "d2l-resnet-chapter.md"
#: The book's tab names for this package's backends.
TABS = {"torch": "pytorch", "tensorflow": "tensorflow", "jax": "jax", "mxnet": "mxnet"}
#: The chapter's classes that this package provides.
PACKAGE_CLASSES = ("Residual", "ResNeXtBlock", "ResNet", "ResNet18")
#: The training cell at a tiny size: 2 epochs on 32 images of the offline set (the chapter's: 10 epochs of
#: Fashion-MNIST), still batch 128 at 96x96. Each replacement must apply, so that a new edition of the cell
#: fails loudly instead of running at full size.
SHRINK = {
    "max_epochs=10": "max_epochs=2",
    "resize=(96, 96))": "resize=(96, 96), dataset='digits', num_examples=32)",
}
#: Keras 3 (this project's TensorFlow) takes a list of layers where Keras 2, which the book was written for,
#: also took one layer: the chapter's ``Sequential(self.b1())`` raises "'Sequential' object is not iterable".
KERAS3 = {"tf.keras.models.Sequential(self.b1())": "tf.keras.models.Sequential([self.b1()])"}
#: What this runner changes, cell text -> why (the README lists them).
ADAPTATIONS = {
    "%load_ext d2lbook.tab": "d2lbook's tab selection for building the book; the runner gives `tab.selected`",
    "d2l.Trainer(": "the training cell, run with " + ", ".join(f"{a} -> {b}" for a, b in SHRINK.items()),
    "tf.keras.models.Sequential(self.b1())": "Keras 3 takes a list of layers",
}


@dataclass(frozen=True)
class Cell:
    """One code cell: its text without the ``%%tab`` line, and the tabs it is for (None: every tab)."""

    index: int
    code: str
    tabs: tuple[str, ...] | None


def chapter_cells(path: Path = CHAPTER) -> list[Cell]:
    """The code cells of the chapter's markdown, in order."""
    found = re.findall(r"^```\{\.python \.input\}\n(.*?)^```", path.read_text(), re.S | re.M)
    cells = []
    for index, text in enumerate(found):
        first, _, rest = text.partition("\n")
        if first.startswith("%%tab"):
            cells.append(Cell(index, rest, tuple(t.strip() for t in first[len("%%tab") :].split(","))))
        else:  # d2lbook runs a cell without %%tab in every tab (a commented "# %%tab jax" too)
            cells.append(Cell(index, text, None))
    return cells


class Tab:
    """d2lbook's ``tab`` object, as the cells use it: ``tab.selected('mxnet')`` is True in the MXNet tab."""

    def __init__(self, name: str) -> None:
        self.name = name

    def selected(self, *names: Any) -> bool:
        """Whether the current tab is one of ``names`` (names or lists of names)."""
        flat = [n for name in names for n in ([name] if isinstance(name, str) else name)]
        return self.name in flat


def defines_package_class(code: str) -> bool:
    """True for a cell that only defines one of this package's classes or adds a method to one
    (``@d2l.add_to_class(ResNet)``)."""
    statements = ast.parse(code).body

    def package_definition(node: ast.stmt) -> bool:
        if isinstance(node, ast.ClassDef):
            return node.name in PACKAGE_CLASSES
        if isinstance(node, ast.FunctionDef):
            return any(
                isinstance(d, ast.Call)
                and ast.unparse(d.func).endswith("add_to_class")
                and any(isinstance(a, ast.Name) and a.id in PACKAGE_CLASSES for a in d.args)
                for d in node.decorator_list
            )
        return False

    return bool(statements) and all(package_definition(node) for node in statements)


def adapted(code: str, backend: str, way: str) -> str:
    """The cell as this runner executes it: the stand-in d2l imported, the training cell shrunk."""
    book_import = f"from d2l import {backend} as d2l"
    if book_import in code:
        ours = f"from resnet.d2l import {backend} as d2l"
        if way == "package":
            ours += f"\nfrom resnet.backends.{backend} import {', '.join(PACKAGE_CLASSES)}"
        code = code.replace(book_import, ours)
    for old, new in KERAS3.items():
        code = code.replace(old, new)
    if "d2l.Trainer(" in code:
        for old, new in SHRINK.items():
            if old not in code:
                raise AssertionError(f"the training cell has no {old!r} to shrink:\n{code}")
            code = code.replace(old, new)
    return code


def run_cell(code: str, namespace: dict[str, Any]) -> tuple[str | None, str]:
    """Execute a cell as a notebook does: (repr of the last expression's value or None, printed text)."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(tree, "<cell>", "exec"), namespace)
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace) if last else None
    return (None if value is None else repr(value)), printed.getvalue()


def run(backend: str, way: str) -> dict[str, Any]:
    """Run the framework's cells; what each showed, and the trainer's history."""
    tab = TABS[backend]
    namespace: dict[str, Any] = {"__name__": "__main__", "tab": Tab(tab)}
    shown: list[dict[str, Any]] = []
    for cell in chapter_cells():
        record: dict[str, Any] = {"index": cell.index, "first_line": cell.code.splitlines()[0]}
        if cell.code.startswith("%load_ext d2lbook.tab"):
            shown.append({**record, "status": "adapted", "why": ADAPTATIONS["%load_ext d2lbook.tab"]})
            continue
        if cell.tabs is not None and tab not in cell.tabs:
            continue
        if way == "package" and defines_package_class(cell.code):
            shown.append({**record, "status": "package", "why": "defines what the package provides"})
            continue
        try:
            out, printed = run_cell(adapted(cell.code, backend, way), namespace)
        except Exception:
            shown.append({**record, "status": "error", "error": traceback.format_exc()})
            break
        shown.append({**record, "status": "ran", "out": out, "printed": printed})
    trainer = namespace.get("trainer")
    return {"cells": shown, "history": getattr(trainer, "history", None)}


if __name__ == "__main__":
    result = run(sys.argv[1], sys.argv[2])
    print("CHAPTER-RESULT " + json.dumps(result))
