"""Issue 22 item 7: the optional modules (torch, transformers, faiss, ray) are attributes of medret.optional that
mypy sees as the modules themselves (imported under TYPE_CHECKING) and that load on first use at run time, with
the extra to install named when one is missing."""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from medret import optional
from medret.errors import MissingDependencyError

SOURCE = Path(optional.__file__).read_text()


def _type_checking_imports() -> dict[str, str]:
    """attribute → module, as imported in optional.py's `if TYPE_CHECKING:` block (read from the source)."""
    tree = ast.parse(SOURCE)
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    return {a.asname or a.name: a.name for n in block.body if isinstance(n, ast.Import) for a in n.names}


def test_every_lazily_loaded_module_is_the_module_to_mypy():
    # what the run-time loader serves (its table, read from the else branch) is exactly what mypy is shown
    tree = ast.parse(SOURCE)
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    table = next(n for n in block.orelse if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "_LAZY")
    lazy = {k: v[0] for k, v in ast.literal_eval(table.value).items()}
    assert lazy == _type_checking_imports() == {"torch": "torch", "transformers": "transformers", "faiss": "faiss",
                                                "ray": "ray"}


@pytest.mark.parametrize("name", ["torch", "transformers", "faiss", "ray"])
def test_each_attribute_is_the_installed_module(name):
    assert getattr(optional, name) is importlib.import_module(name)


@pytest.mark.parametrize("name,extra", [("torch", "dense"), ("faiss", "dense"), ("ray", "ray")])
def test_a_missing_module_names_its_extra(name, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError, as when not installed
    with pytest.raises(MissingDependencyError, match=rf"needs the Python package '{name}'.*pip install "
                                                     rf"'medret\[{extra}\]'"):
        getattr(optional, name)
    with pytest.raises(MissingDependencyError, match=rf"'medret\[{extra}\]'"):
        optional.require("transformers", name)


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'medret.optional' has no attribute 'tensorflow'"):
        optional.tensorflow  # noqa: B018
    assert not hasattr(optional, "tensorflow")
