"""`retinanet <command> ...`: one thin module per command in this folder.

Each command module has ``add_arguments(parser)`` and ``run(args) -> int``: it turns the
arguments into one library call and prints what came back. Commands never call each
other; what two commands share lives in the library.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from ..stop import TrainingInterrupted
from . import anchors, benchmark, cfg, check_data, convert, evaluate, export, predict, pretrain, serve, track, train, weights

# command -> (module, one-line help), in the order `retinanet --help` lists them
COMMANDS = {
    "train": (train, "fine-tune a detector (default: on the built-in synthetic shapes)"),
    "eval": (evaluate, "COCO metrics (pycocotools) of a checkpoint on a dataset, with PR curves and a confusion matrix"),
    "predict": (predict, "run a model on images, folders, videos or a webcam; annotated output and COCO JSON"),
    "track": (track, "follow objects through videos (ByteTrack): ids drawn, MOTChallenge text"),
    "export": (export, "export a checkpoint to ONNX (NMS inside, optionally int8), OpenVINO IR or LiteRT"),
    "serve": (serve, "serve a model over HTTP (JSON API, batched requests) with a web page"),
    "benchmark": (benchmark, "latency of eager, TorchScript, ONNX fp32 / int8 beside the torchvision peer"),
    "weights": (weights, "install and verify the offline ImageNet MobileNetV2 weights"),
    "check-data": (check_data, "validate a dataset: problems, class counts, box size histograms"),
    "convert": (convert, "convert a dataset between COCO, Pascal VOC and YOLO formats"),
    "pretrain": (pretrain, "pretrain a MobileNet backbone as an image classifier (ImageNet-style folders)"),
    "anchors": (anchors, "best possible recall of the anchors on a dataset; fit scales and ratios to it"),
    "cfg": (cfg, "print every configuration key with its default and one-line doc"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retinanet", description="RetinaNet with MobileNet backbones: train, evaluate, predict, export."
    )
    parser.add_argument("--version", action="version", version=f"retinanet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # a warning is one line naming the command, as an error is
            warnings.showwarning = _one_line(args.command)
            return int(args._run(args) or 0)
    except TrainingInterrupted as e:  # SIGTERM / Ctrl-C: saved, with the resume command
        print(f"retinanet {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Errors meant for the user (bad config, missing file, corrupt data): one clear line.
        text = describe_os_error(e) if isinstance(e, OSError) else str(e)
        print(f"retinanet {args.command}: error: {text}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, no permission, ...: the path and the cause
        print(f"retinanet {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1


def _one_line(command: str):
    """A warnings.showwarning that prints ``retinanet COMMAND: warning: message``."""

    def show(message, *_args, **_kwargs) -> None:
        print(f"retinanet {command}: warning: {message}", file=sys.stderr)

    return show


def describe_os_error(e: OSError) -> str:
    """'path: cause' for an OSError that names its file, else its own text."""
    if e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)
