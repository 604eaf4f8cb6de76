"""Every flag a message names exists, in the command that prints it.

The package's string literals are scanned for ``--flag`` spellings. A flag after
``retinanet <command>`` in the same string belongs to that command; any other flag belongs
to the command of the cli module it is written in, or, in library code, to every command
that reaches that code: the modules ``load_dataset`` imports print through train, eval,
anchors, check-data and convert; those of the training run through train; those of
prediction (leaving out the data readers and the model it shares with the others, whose
messages it never prints) through predict. Any other flag must be one of some command.
Then the messages are provoked for real and their flags looked up in the parser of the
command that printed them."""

from __future__ import annotations

import argparse
import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest
from PIL import Image

import retinanet
from retinanet.cli import COMMANDS, build_parser, main

PACKAGE = Path(retinanet.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
COMMAND_LINE = re.compile(r"\bretinanet ([a-z][a-z-]*)")
EXTERNAL = {"--no-deps": "pip install", "--nproc_per_node": "torchrun"}  # other programs' flags
# (module whose imports, at any depth, print through these commands, modules left out of it, commands)
REACHED_BY = [
    ("retinanet.data.spec", (), ("train", "eval", "anchors", "check-data", "convert")),
    ("retinanet.engine", (), ("train",)),
    ("retinanet.predict", ("retinanet.data.spec", "retinanet.model"), ("predict",)),
]


@lru_cache(maxsize=None)
def parsers() -> dict[str, set[str]]:
    """Command -> every option string its parser accepts (hidden aliases too)."""
    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    top = {o for a in root._actions for o in a.option_strings}
    return {name: top | {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def trees() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The package modules ``name`` imports, at any depth of its code (lazy imports too)."""
    found = set()
    package = name if name in trees() and (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists() else name.rpartition(".")[0]
    for node in ast.walk(trees()[name]):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = f"{base}.{node.module}" if node.module and base else node.module or base
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in trees()}
    return found


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imports(m)
    return seen


def flags_in(text: str) -> list[tuple[str, str | None]]:
    """(flag, the command named before it in ``text`` or None)."""
    out = []
    for m in FLAG.finditer(text):
        named = [c.group(1) for c in COMMAND_LINE.finditer(text, 0, m.start()) if c.group(1) in COMMANDS]
        out.append((m.group(0), named[-1] if named else None))
    return out


@lru_cache(maxsize=None)
def mentions() -> list[tuple[str, int, str, str | None]]:
    """(module, line, flag, command named before it) for every flag in a string literal."""
    found = []
    for name, tree in trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [(name, node.lineno, flag, cmd) for flag, cmd in flags_in(node.value)]
    return found


def owners(module: str) -> tuple[str, ...]:
    """The commands a string in ``module`` is printed by (empty: only 'some command')."""
    cli = {mod.__name__: cmd for cmd, (mod, _) in COMMANDS.items()}
    if module in cli:
        return (cli[module],)
    reached = [cmds for root, shared, cmds in REACHED_BY if module in closure(root) - set().union(*map(closure, shared))]
    return tuple(sorted({c for cmds in reached for c in cmds}))


def test_the_scan_finds_what_it_must():
    found = {(m, f) for m, _, f, _ in mentions()}
    assert ("retinanet.data.report", "--drop-bad") in found  # "... with drop_bad=True (--drop-bad)"
    assert "retinanet.data.report" in closure("retinanet.data.spec")
    assert owners("retinanet.cli.train") == ("train",) and "eval" in owners("retinanet.data.report")
    assert flags_in("fix it (--drop-bad); `retinanet check-data x --split val` lists") == [("--drop-bad", None), ("--split", "check-data")]


def test_every_flag_named_in_a_message_exists_where_it_is_printed():
    every = set().union(*parsers().values())
    missing = []
    for module, line, flag, named in mentions():
        if flag in EXTERNAL:
            continue
        commands = (named,) if named else owners(module)
        where = [c for c in commands if flag not in parsers()[c]] if commands else ([] if flag in every else ["any command"])
        missing += [f"{module}:{line}: {flag} is not a flag of {c}" for c in where]
    assert not missing, "\n".join(missing)


def _bad_dataset(tmp_path: Path, raccoon: Path) -> Path:
    """A YOLO folder whose one label line is garbled: unusable unless dropped."""
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.open(raccoon / "images" / "raccoon-1.jpg").save(root / "images" / "a.jpg")
    Image.open(raccoon / "images" / "raccoon-2.jpg").save(root / "images" / "b.jpg")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "b.txt").write_text("0 0.5 oops 0.2 0.2\n")
    return root


def _error_line(err: str, command: str) -> str:
    """The one line ``retinanet COMMAND: error: ...`` (after any progress bars)."""
    start = err.index(f"retinanet {command}: error: ")
    return err[start:].rstrip("\n")


def _named(line: str) -> set[str]:
    return {flag for flag, _ in flags_in(line)} - set(EXTERNAL)


@pytest.mark.parametrize(
    "command, argv",
    [
        ("train", ["train", "--data", "{data}", "--no-progress", "--no-final", "data.workers=0", "epochs=1"]),
        ("eval", ["eval", "--model", "{tmp}/never-read.pt", "--data", "{data}"]),
        ("anchors", ["anchors", "{data}"]),
        ("convert", ["convert", "{data}", "{tmp}/out", "--to", "coco"]),
    ],
)
def test_a_data_error_names_flags_of_the_command_that_printed_it(command, argv, tmp_path, raccoon, capsys):
    data = _bad_dataset(tmp_path, raccoon)
    assert main([a.format(data=data, tmp=tmp_path) for a in argv]) == 1
    line = _error_line(capsys.readouterr().err, command)
    assert "--drop-bad" in line and "\n" not in line, line
    assert _named(line) <= parsers()[command], _named(line) - parsers()[command]


def test_predict_errors_name_predict_flags(tmp_path, capsys):
    for bad in (["--batch", "0"], ["--max-frames", "0"], ["--device", "cuda:7"] if not _cuda() else ["--batch", "0"]):
        assert main(["predict", str(tmp_path / "x.jpg"), "--out", str(tmp_path / "o"), *bad]) == 1
        line = _error_line(capsys.readouterr().err, "predict")
        assert _named(line) and _named(line) <= parsers()["predict"], line


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
