"""Shared by the benchmarks: medians and the machine line (timing lives in retinanet.benchmark)."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

import torch

from retinanet.benchmark import machine_line

ROOT = Path(__file__).resolve().parents[1]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def machine() -> str:
    """The machine line of `retinanet benchmark`, plus the commit measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"{machine_line(torch.get_num_threads())}, commit {commit}"
