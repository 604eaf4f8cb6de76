"""Shared by the benchmarks: medians, the machine line and the report file (timing lives in retinanet.benchmark)."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from retinanet.benchmark import machine_line

ROOT = Path(__file__).resolve().parents[1]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def flops(fn) -> float:
    """GFLOP of one call of ``fn`` (torch.utils.flop_counter: 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def machine() -> str:
    """The machine line of `retinanet benchmark`, plus the commit measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"{machine_line(torch.get_num_threads())}, commit {commit}"


def write_report(name: str, text: str) -> None:
    """Print a benchmark's report and keep it as bench/out/<name>.md."""
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / f"{name}.md").write_text(text + "\n")
    print(text)
