"""`retinanet cfg [SECTION]`: every configuration key with its default and one-line doc."""

from __future__ import annotations

import argparse

from ..config import Config
from ..config.describe import format_keys, keys
from ..config.io import KEY_ALIASES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("section", nargs="?", help="only keys under this section, e.g. model, train, model.anchors")


def run(args: argparse.Namespace) -> int:
    items = keys(Config())
    if args.section:
        prefix = args.section.rstrip(".") + "."
        items = [k for k in items if k.name.startswith(prefix)]
        if not items:
            sections = sorted({k.name.split(".")[0] for k in keys(Config())})
            raise ValueError(f"no configuration keys under {args.section!r}; sections: {', '.join(sections)}")
    print("# model, data and train: `retinanet train key=value` or a --config YAML; the other sections")
    print("# are the defaults of their command's flags (retinanet COMMAND --help). Short keys for train:")
    print("# " + ", ".join(f"{short} -> {key}" for short, key in KEY_ALIASES.items()))
    print(format_keys(items))
    return 0
