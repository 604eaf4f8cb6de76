"""RetinaNet with MobileNet backbones: a small, fast single-stage object detector.

    from retinanet import Detector, build_model
    det = Detector("runs/train/exp/best.pt")     # or an exported .onnx
    result = det.predict("photo.jpg")

The public names are imported on first use (PEP 562), so importing one part of the
package (``retinanet.config``, ``retinanet.data``) does not load all of it.
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("retinanet-mobilenet")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+source"

# public name -> the module that defines it
_PUBLIC = {"Detector": ".api", "Result": ".api", "RetinaNet": ".model", "build_model": ".model"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
