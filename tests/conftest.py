"""Shared test fixtures. Real data comes from ../shared/datasets (never copied here).

Outside CI a test that needs the data skips when it is missing; with CI=true it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATASETS = Path(os.environ.get("RETINANET_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
COCO128 = DATASETS / "coco128"
RACCOON = DATASETS / "raccoon"


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"test data not found: {path} (set RETINANET_DATASETS to the shared datasets folder)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def coco128() -> Path:
    return _require(COCO128)


@pytest.fixture(scope="session")
def raccoon() -> Path:
    return _require(RACCOON)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(checkpoint, exported .onnx) of test_export.build_test_model(), written once per
    session and shared by every test module that predicts with a model."""
    from test_export import shared_export

    return shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_detector(exported):
    """A Detector over the shared ONNX model, at a low confidence (the model is untrained)."""
    from retinanet.api import Detector

    return Detector(exported[1], conf=0.03)
