"""`retinanet export`: a checkpoint -> one ONNX graph (NMS inside), optionally also an
int8 copy; with --format openvino each also as OpenVINO IR; with --format litert the
network alone as a LiteRT flatbuffer (fp32, and int8 with --int8); optionally checked against eager PyTorch on a few images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.export import CALIBRATION_METHODS, OPSET, ExportConfig, QuantizeConfig
from .flags import add_flag

RUNTIMES = {".xml": "OpenVINO", ".tflite": "LiteRT"}
VERIFY_IMAGES = 16  # --verify compares on the first this many images


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint (.pt) to export")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "openvino", "litert"],
        help="onnx (ONNX Runtime); openvino: OpenVINO IR (.xml + .bin), written beside the .onnx it is made from; "
        "litert: LiteRT / TFLite (.tflite), the network alone at the --imgsz square (letterbox and NMS run outside it)",
    )
    add_flag(p, "--out", "-o", aliases=("--output",),
             help="output file (default: the checkpoint's path with .onnx, .xml for openvino, .tflite for litert)")  # fmt: skip
    add_flag(p, "--imgsz", aliases=("--size",), type=int, default=ExportConfig.input_size,
             help="input size the graph letterboxes to (default: the model's)")  # fmt: skip
    p.add_argument("--conf", type=float, default=ExportConfig.score_thresh, help="default score threshold (an input of the graph)")
    p.add_argument("--iou", type=float, default=ExportConfig.nms_iou, help="default NMS IoU threshold (an input of the graph)")
    p.add_argument("--max-det", type=int, default=ExportConfig.max_detections, help="detections per image (fixed output rows)")
    p.add_argument("--topk", type=int, default=ExportConfig.topk, help="candidates per pyramid level before NMS")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument(
        "--square",
        action="store_true",
        help="letterbox to the full size x size square (one fixed input shape) instead of padding to a multiple of 32",
    )
    shape.add_argument(
        "--rect", action="store_true", help="pad only to a multiple of 32 even if the checkpoint's model.rect is false"
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="the network alone (float (N, 3, S, S) image in; class logits, box deltas and anchors out) for runtimes "
        "that cannot run the full graph (TensorRT, OpenCV DNN, NCNN, RKNN); default out: <checkpoint>.raw.onnx",
    )
    p.add_argument("--no-fold-bn", action="store_true", help="keep every batch norm (and the input scaling) as separate ops")
    p.add_argument("--opset", type=int, default=ExportConfig.opset, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--int8", action="store_true", help="also write a static int8 model (<out stem>.int8.onnx, .int8.xml or .int8.tflite)")
    p.add_argument("--calibration", help="images for int8 calibration: folder or glob (required with --int8)")
    p.add_argument(
        "--calibration-images",
        type=int,
        default=QuantizeConfig.num_images,
        help=f"calibration images used (default {QuantizeConfig.num_images})",
    )
    p.add_argument("--calibration-method", default=QuantizeConfig.method, choices=list(CALIBRATION_METHODS))
    p.add_argument("--fp32-predictors", action="store_true", help="int8: keep the final class/box convs in fp32")
    p.add_argument("--verify", help="images (folder or glob) to compare eager PyTorch and ONNX Runtime detections on")


def export_config(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(
        input_size=args.imgsz,
        score_thresh=args.conf,
        nms_iou=args.iou,
        max_detections=args.max_det,
        topk=args.topk,
        fold_bn=not args.no_fold_bn,
        opset=args.opset,
        rect=False if args.square else True if args.rect else None,
    )


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import model_from_checkpoint
    from ..export import export_onnx, quantize_int8

    ckpt = Path(args.checkpoint)
    if args.int8 and not args.calibration:
        raise ValueError("--int8 needs --calibration IMAGES (a folder or glob of representative images)")
    if args.int8 and args.format != "onnx" and (args.fp32_predictors or args.calibration_method != QuantizeConfig.method):
        own = {"openvino": "NNCF's own min-max", "litert": "PT2E min-max observers"}[args.format]
        raise ValueError(f"--format {args.format} --int8 calibrates with {own}: --calibration-method and --fp32-predictors apply to ONNX only")
    if args.raw and (args.int8 or args.verify or args.format != "onnx"):
        raise ValueError("--raw writes the network alone as ONNX: it does not combine with --int8, --verify or --format openvino/litert")
    if args.format == "litert" and args.rect:
        raise ValueError("--rect does not apply to --format litert: the .tflite takes one fixed --imgsz square")
    model = model_from_checkpoint(ckpt)
    if args.format == "litert":
        return _litert(model, ckpt, args)
    if args.raw:
        from ..export.raw import export_raw

        out = export_raw(model, Path(args.out) if args.out else ckpt.with_suffix(".raw.onnx"), args.imgsz, args.opset)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, network only: postprocess.postprocess_raw decodes it)")
        return 0
    out = Path(args.out) if args.out else ckpt.with_suffix(".onnx")
    if args.format == "openvino":  # --out names the .xml; the .onnx it is made from goes beside it
        out = out.with_suffix(".onnx")
    export_onnx(model, out, export_config(args))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, fp32)")
    outputs = [out]
    if args.format == "openvino":
        return _openvino(model, out, args)
    if args.int8:
        q_out = out.with_name(out.stem + ".int8.onnx")
        qcfg = QuantizeConfig(num_images=args.calibration_images, method=args.calibration_method, fp32_predictors=args.fp32_predictors)
        quantize_int8(out, q_out, args.calibration, qcfg)
        print(f"wrote {q_out} ({q_out.stat().st_size / 1e6:.1f} MB, int8)")
        outputs.append(q_out)
    if args.verify:
        _verify(model, outputs, args.verify)
    return 0


def _litert(model, ckpt: Path, args: argparse.Namespace) -> int:
    from ..export.litert import export_litert

    out = export_litert(model, Path(args.out) if args.out else ckpt.with_suffix(".tflite"), args.imgsz)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, LiteRT fp32, network only: letterbox and NMS run in the Detector)")
    outputs = [out]
    if args.int8:
        q_out = export_litert(model, out.with_name(out.stem + ".int8.tflite"), args.imgsz, args.calibration, args.calibration_images)
        print(f"wrote {q_out} ({q_out.stat().st_size / 1e6:.1f} MB, LiteRT int8)")
        outputs.append(q_out)
    if args.verify:
        _verify(model, outputs, args.verify)
    return 0


def _openvino(model, onnx_path: Path, args: argparse.Namespace) -> int:
    """The fp32 IR from the ONNX graph, and with --int8 an int8 IR quantized from it by NNCF."""
    from ..export.openvino import export_openvino, quantize_openvino

    outputs = [export_openvino(onnx_path, onnx_path.with_suffix(".xml"))]
    if args.int8:
        outputs.append(quantize_openvino(outputs[0], onnx_path.with_name(onnx_path.stem + ".int8.xml"), args.calibration, args.calibration_images))
    for xml, precision in zip(outputs, ("fp32", "int8")):
        size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        print(f"wrote {xml} and {xml.with_suffix('.bin').name} ({size / 1e6:.1f} MB, OpenVINO IR {precision})")
    if args.verify:
        _verify(model, outputs, args.verify)
    return 0


def _verify(model, outputs: list[Path], source: str) -> None:
    from ..api import expand_images
    from ..export import WORKING_CONF, parity_report

    images = expand_images(source)[:VERIFY_IMAGES]
    for path in outputs:
        r = parity_report(model, path, images)
        print(
            f"{path.name}: eager vs {RUNTIMES.get(path.suffix, 'ONNX Runtime')} on {r['images']} images: {r['matched']:.1%} of "
            f"{r['detections']} detections matched, {r['matched_working']:.1%} of the "
            f"{r['detections_working']} scoring >= {WORKING_CONF}; max box difference {r['max_box_diff']:.3f} px"
        )
