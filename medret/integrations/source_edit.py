"""Insert text into Python source at places found with :mod:`ast` (used by :mod:`medret.integrations.searchr1_patch`).

Insertions are recorded against the original lines and applied bottom-up, so the offsets :mod:`ast` reported stay
valid; the rest of the file keeps its bytes (newline style, final newline, indentation).
"""
from __future__ import annotations

import ast


class SourceText:
    """Source text with line-based insertions, applied bottom-up so earlier offsets stay valid."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.newline = "\r\n" if "\r\n" in source else "\n"
        self._inserts: list[tuple[int, int, str]] = []  # (line index 0-based, column, text)

    def line(self, lineno: int) -> str:
        return self.lines[lineno - 1]

    def insert_before_line(self, lineno: int, text: str) -> None:
        self._inserts.append((lineno - 1, 0, text))

    def insert_after_line(self, lineno: int, text: str) -> None:
        self._inserts.append((lineno, 0, text))

    def insert_at(self, lineno: int, col_offset: int, text: str) -> None:
        # ast column offsets are UTF-8 byte offsets
        raw = self.lines[lineno - 1].encode("utf-8")
        col = len(raw[:col_offset].decode("utf-8"))
        self._inserts.append((lineno - 1, col, text))

    def render(self) -> str:
        lines = list(self.lines)
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += self.newline
            added_final_newline = True
        else:
            added_final_newline = False
        for index, col, text in sorted(self._inserts, key=lambda t: (t[0], t[1]), reverse=True):
            if col == 0 and index <= len(lines):
                lines.insert(index, text)
            else:
                lines[index] = lines[index][:col] + text + lines[index][col:]
        out = "".join(lines)
        if added_final_newline and out.endswith(self.newline):
            out = out[: -len(self.newline)]
        return out


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def find_class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


def find_method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def dataclass_fields(cls: ast.ClassDef) -> list[ast.AnnAssign]:
    return [n for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def is_dataclass(cls: ast.ClassDef) -> bool:
    for dec in cls.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Name) and target.id == "dataclass":
            return True
        if isinstance(target, ast.Attribute) and target.attr == "dataclass":
            return True
    return False


def first_statement_after_docstring(fn: ast.FunctionDef) -> ast.stmt:
    body = fn.body
    if (len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return body[1]
    return body[0]


def statement_start_line(stmt: ast.stmt) -> int:
    decorators = getattr(stmt, "decorator_list", None) or []
    return min([stmt.lineno] + [d.lineno for d in decorators])
