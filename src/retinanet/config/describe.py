"""Every key of a config tree with its default and one-line doc (``retinanet cfg``).

A field's doc is the string written under it in the dataclass (read from the source with
``ast``, as Sphinx reads attribute docstrings), so it is written once, next to the field."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Key:
    name: str
    """Dotted key, e.g. model.anchors.sizes."""
    default: Any
    doc: str


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring written under it} of dataclass ``cls``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # the class statement's body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def keys(cfg: Any, prefix: str = "") -> list[Key]:
    """Every leaf field of the dataclass instance ``cfg``, depth first, in field order."""
    out: list[Key] = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += keys(value, f"{name}.")
        else:
            out.append(Key(name, value, docs.get(f.name, "")))
    return out


def format_keys(items: list[Key]) -> str:
    """One line per key: ``name = default  # doc``, defaults aligned."""
    rows = [(k.name, _show(k.default), k.doc) for k in items]
    width = max((len(n) + len(d) for n, d, _ in rows), default=0) + 3
    return "\n".join(f"{f'{n} = {d}':<{width}}  # {doc}" if doc else f"{n} = {d}" for n, d, doc in rows)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float):
        text = f"{value:g}"
        return text if any(c in text for c in ".einf") else f"{text}.0"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "''"
