"""`retinanet weights`: put torchvision's ImageNet MobileNetV2 file where torchvision looks."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from ..backbones import install_offline_weights

    install_offline_weights(verbose=not args.quiet)
    return 0
