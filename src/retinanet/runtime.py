"""Where and how training runs: the device, the torchrun process group, mixed precision,
random state and seeding, DataLoader workers and their errors. Shared by the detector
(engine.py) and backbone pretraining (pretrain/)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from .data.images import ImageError


@dataclass
class Dist:
    """This process's place in a torchrun job (one process, rank 0, without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> Dist:
    """Join the process group torchrun describes in the environment (a no-op without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local)


def resolve_device(name: str, d: Dist | None = None, setting: str = "device") -> torch.device:
    """'auto' = this process's CUDA device when CUDA is present, else the CPU. An explicit
    CUDA device that is absent is an error naming ``setting``; under torchrun every
    process takes its own local GPU."""
    d = d or Dist()
    if name == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}={name} but CUDA is not available on this machine")
    if device.type == "cuda" and d.enabled:
        device = torch.device(f"cuda:{d.local_rank}")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision. 'auto' uses bf16 on CUDA with bf16 (else
    fp16) and full precision on a CPU."""
    if mode == "off":
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA; use bf16 or off on a CPU")
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode != "auto":
        raise ValueError(f"train.amp must be auto, off, bf16 or fp16, not {mode!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # bf16 autocast made training steps 1.2x to 1.5x faster on a CPU with AVX512-BF16 and
    # kept raccoon's validation AP, but lost on aquarium at 640 px (validation AP 0.164
    # against 0.181; BENCHMARKS.md), so it stays opt-in on a CPU. Without native bf16 it is
    # emulated, and slower.
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch, Python and numpy random state as plain values (loadable with weights_only=True)."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [int(x) if not isinstance(x, np.ndarray) else x.tolist() for x in np.random.get_state()[1:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def resolve_workers(n: int) -> int:
    """DataLoader workers: ``n`` itself, or for -1 none on a machine with 2 cores or fewer
    (workers would only take cores from the network) and up to 4 elsewhere."""
    if n >= 0:
        return n
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


def batches(loader: Iterable) -> Iterator:
    """The loader's batches; an undecodable image stops with a one-line error naming the file.

    A DataLoader worker's exception reaches the main process with the worker's traceback
    in its message; its last line is the original ``module.ImageError: message``."""
    try:
        yield from loader
    except ImageError as e:
        last = str(e).strip().splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        raise ImageError(last[len(prefix) :] if last.startswith(prefix) else str(e)) from None
