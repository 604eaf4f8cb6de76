"""`retinanet <command> ...`: a thin dispatcher. Each command lives in its module, which
provides ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("retinanet.train", "fine-tune a detector (default: on the built-in synthetic shapes)"),
    "eval": ("retinanet.evaluate", "COCO metrics (pycocotools) of a checkpoint on a dataset, with PR curves and a confusion matrix"),
    "predict": ("retinanet.predict", "run a model on images, folders, videos or a webcam; annotated output and COCO JSON"),
    "export": ("retinanet.export", "export a checkpoint to ONNX (NMS inside), optionally int8"),
    "benchmark": ("retinanet.benchmark", "latency of eager, TorchScript, ONNX fp32 / int8 beside the torchvision peer"),
    "weights": ("retinanet.weights_cmd", "install and verify the offline ImageNet MobileNetV2 weights"),
    "check-data": ("retinanet.data.check", "validate a dataset: problems, class counts, box size histograms"),
    "convert": ("retinanet.data.convert", "convert a dataset between COCO, Pascal VOC and YOLO formats"),
    "pretrain": ("retinanet.pretrain", "pretrain a MobileNet backbone as an image classifier (ImageNet-style folders)"),
    "anchors": ("retinanet.anchors_cmd", "best possible recall of the anchors on a dataset; fit scales and ratios to it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retinanet", description="RetinaNet with MobileNet backbones: train, evaluate, predict, export."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Errors meant for the user (bad config, missing file, corrupt data): one clear line.
        print(f"retinanet {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
