"""RetinaNet with MobileNet backbones: a small, fast single-stage object detector.

    from retinanet import Detector, build_model
    det = Detector("runs/train/exp/best.pt")     # or an exported .onnx
    result = det.predict("photo.jpg")
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("retinanet-mobilenet")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+source"

from .api import Detector, Result  # noqa: E402
from .model import RetinaNet, build_model  # noqa: E402

__all__ = ["Detector", "Result", "RetinaNet", "__version__", "build_model"]
