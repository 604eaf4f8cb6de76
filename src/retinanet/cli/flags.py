"""The flags every command spells the same way, and the old spellings kept as hidden aliases.

    --batch        images per step or call          --out        output folder (or file)
    --imgsz        input size (model.input_size)     --device     auto | cpu | cuda[:N] | gpu | npu
    --classes      keep only these classes           --num-classes  number of classes
    --weights      weights to start from

An old spelling (``--batch-size``, ``--output``, ``--input-size``, ...) still parses into
the same value; it is left out of ``--help`` and prints a one-line note naming the new flag.
A command that writes a folder writes a new numbered one, ``runs/<command>/exp``, ``exp2``,
..., unless ``--out`` names one, so no run replaces an earlier one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEVICE_HELP = "auto (CUDA when present, else the CPU), cpu, cuda or cuda:N; gpu, gpu.N or npu for an OpenVINO .xml (default: auto)"
CLASSES_HELP = "keep only these classes: names or indices, comma-separated (person,dog), or the flag repeated"


class DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: stores into the new flag's value and says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"retinanet: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_flag(p: argparse.ArgumentParser, *names: str, aliases: tuple[str, ...] = (), **kwargs: Any) -> argparse.Action:
    """``p.add_argument(*names, **kwargs)`` plus each of ``aliases`` as a hidden, deprecated
    spelling of ``names[0]`` (same value, same type and choices)."""
    action = p.add_argument(*names, **kwargs)
    for old in aliases:
        p.add_argument(
            old, dest=action.dest, action=DeprecatedFlag, new=names[0], help=argparse.SUPPRESS,
            default=argparse.SUPPRESS, type=action.type, nargs=action.nargs, choices=action.choices, metavar=action.metavar,
        )  # fmt: skip
    return action


def add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> argparse.Action:
    return p.add_argument("--device", default=default, help=DEVICE_HELP)


def _comma_list(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def add_classes(p: argparse.ArgumentParser, help: str = CLASSES_HELP) -> argparse.Action:
    """One value per flag (a source after it stays a source), comma-separated; repeated flags add up."""
    return p.add_argument("--classes", action="extend", type=_comma_list, metavar="CLASS[,CLASS...]", help=help)


def class_list(values: list[str] | None) -> list[str] | None:
    """``--classes a,b --classes c`` (parsed to ['a', 'b', 'c']) -> ['a', 'b', 'c']; None when not given."""
    if not values:
        return None
    return [c.strip() for v in values for c in v.split(",") if c.strip()] or None


def run_dir(out: str | None, runs: str) -> Path:
    """``--out`` as given, else the next free ``<runs>/exp``, ``exp2``, ... (``runs`` is
    ``runs/<command>``)."""
    from ..run_folder import next_run_dir

    return Path(out) if out else next_run_dir(runs, "")
