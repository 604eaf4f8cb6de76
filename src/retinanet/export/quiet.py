"""Silencing the warnings of the libraries the exporter drives, for one block."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_logger(name: str | None, level: int = logging.ERROR) -> Iterator[None]:
    """Silence one library logger for a block: the exporter's onnx_ir warns about an
    internal empty attribute, the quantizer (root logger) advises a pre-processing step
    that does not apply to a graph with its own letterbox."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)
