"""`retinanet cfg`: every configuration key with its default and one-line doc."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("section", nargs="?", help="only this section (e.g. model, train, model.anchors)")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("retinanet cfg")
