"""Settings of `retinanet export` (the ONNX graph and its int8 quantization) and of
`retinanet benchmark`, with the names their options choose from."""

from __future__ import annotations

from dataclasses import dataclass

OPSET = 18  # Resize's antialias attribute needs opset 18: the default and the minimum

# Calibration method -> onnxruntime.quantization.CalibrationMethod member.
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}

# Runtimes `retinanet benchmark` can time; "compile" (torch.compile) takes minutes to build.
RUNTIMES = ("eager", "torchscript", "compile", "onnx", "int8", "openvino", "openvino-int8", "litert", "litert-int8")
DEFAULT_RUNTIMES = ("eager", "torchscript", "onnx", "int8")


@dataclass
class ExportConfig:
    """Options of `retinanet export`; None means the model's own value."""

    input_size: int | None = None
    """Longest side the graph letterboxes to (default: the model's input_size)."""
    rect: bool | None = None
    """Pad the letterboxed image only up to a multiple of 32 (a 4:3 photo at 320 runs at
    320 x 256, as eager predict does), instead of to the full square (default: the model's
    ``rect``)."""
    score_thresh: float | None = None
    """Default of the graph's score_threshold input."""
    nms_iou: float | None = None
    """Default of the graph's iou_threshold input."""
    max_detections: int | None = None
    """Rows of the padded outputs (detections kept per image)."""
    topk: int | None = None
    """Candidates kept per pyramid level before NMS."""
    fold_bn: bool = True
    """Fold every batch norm into its conv (the head's per level into per-level copies) and
    the input's division by std into the stem conv (speed)."""
    opset: int = OPSET
    """ONNX opset (18 or newer: antialiased Resize)."""
    check: bool = True
    """Run onnx.checker on the result."""


@dataclass
class QuantizeConfig:
    """Static post-training quantization (onnxruntime.quantization, QDQ format)."""

    num_images: int = 300
    """Calibration images (an even spread over the calibration source; NNCF's default count
    too). On an aquarium model 300 kept 0.7 to 1.2 points of AP50 more than 100 with ONNX
    Runtime, 0.5 to 0.9 with OpenVINO (validation and test splits; BENCHMARKS.md)."""
    method: str = "minmax"
    """Activation range estimate: 'minmax', 'percentile' or 'entropy'."""
    per_channel: bool = True
    """One weight scale per output channel (needed for depthwise and BN-folded convs)."""
    op_types: tuple[str, ...] = ("Conv", "Add", "Clip", "Resize", "Concat")
    """Operators quantized inside the network; quantizing the ops between convs lets ORT
    keep tensors in int8 from one conv to the next instead of converting at every boundary."""
    fp32_predictors: bool = False
    """Keep the head's final class/box convs in fp32 (slower, may keep more accuracy)."""


@dataclass
class BenchConfig:
    """What `retinanet benchmark` measures, and how often."""

    sizes: tuple[int, ...] = (320,)
    """Input sizes (square side) to measure."""
    batch: int = 1
    """Images per call."""
    num_classes: int = 80
    """Classes of a --preset model (a checkpoint brings its own)."""
    repeats: int = 20
    """Rounds; each runs every runtime BLOCK times back to back (the first call not counted)."""
    warmup: int = 3
    """Untimed calls per runtime first."""
    threads: int = 2
    """torch and ONNX Runtime intra-op threads."""
