"""Requests share forward passes: a bounded queue in front of one worker thread that owns
the Detector, takes up to ``max_batch`` waiting images within ``window_s`` of the first and
runs them together (one call per score threshold asked for).

    submit(image, size, name, conf) -> concurrent.futures.Future of a Result
        raises QueueFull at once when ``max_queue`` images already wait (the caller answers 503)
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

LATENCIES_KEPT = 1000  # the latency percentiles cover the last this many requests


class QueueFull(RuntimeError):
    """Every place in the queue is taken."""


@dataclass
class _Job:
    image: Tensor
    size: tuple[int, int]
    name: str
    conf: float | None
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class Stats:
    """What /metrics reports: requests served, refused and failed, forward passes (calls of
    the model's backend), batch sizes, and latency from queueing to result."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.refused = self.failed = self.forward_passes = 0
        self.batch_sizes: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)

    def snapshot(self, queued: int) -> dict[str, Any]:
        with self.lock:
            lat = sorted(self.latencies)
            pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None  # noqa: E731
            return {
                "requests": self.requests, "refused": self.refused, "failed": self.failed,
                "forward_passes": self.forward_passes, "queued": queued,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "latency_ms": {"p50": pick(0.5), "p95": pick(0.95), "count": len(lat)},
            }  # fmt: skip


class Batcher:
    """One worker thread running ``detector`` on batches of queued images."""

    def __init__(self, detector: Any, max_queue: int = 64, max_batch: int = 8, window_s: float = 0.005):
        if max_queue < 1 or max_batch < 1 or window_s < 0:
            raise ValueError("max_queue and max_batch must be at least 1 and the batch window at least 0")
        self.detector, self.max_batch, self.window_s = detector, max_batch, window_s
        self.detector.batch_size = max(self.detector.batch_size, max_batch)  # one batch: one backend call per size
        self.queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self.stats = Stats()
        self._count_forward_passes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retinanet-batcher", daemon=True)
        self._thread.start()

    def _count_forward_passes(self) -> None:
        backend, run = self.detector.backend, self.detector.backend.run

        def counted(*args, **kwargs):
            with self.stats.lock:
                self.stats.forward_passes += 1
            return run(*args, **kwargs)

        backend.run = counted

    def submit(self, image: Tensor, size: tuple[int, int], name: str, conf: float | None = None) -> Future:
        job = _Job(image, size, name, conf)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            with self.stats.lock:
                self.stats.refused += 1
            raise QueueFull(f"all {self.queue.maxsize} places in the queue are taken") from None
        return job.future

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = [self.queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            deadline = time.perf_counter() + self.window_s
            while len(jobs) < self.max_batch:
                try:  # what is already waiting, then whatever arrives before the window closes
                    jobs.append(self.queue.get(timeout=max(0.0, deadline - time.perf_counter())))
                except queue.Empty:
                    break
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        with self.stats.lock:
            self.stats.batch_sizes[len(jobs)] += 1
        by_conf: dict[float | None, list[_Job]] = {}
        for job in jobs:
            by_conf.setdefault(job.conf, []).append(job)
        for conf, group in by_conf.items():
            try:
                results = self.detector.predict_tensors(
                    [j.image for j in group], names=[j.name for j in group], conf=conf, sizes=[j.size for j in group]
                )
            except Exception as e:  # the requests fail, the server goes on
                with self.stats.lock:
                    self.stats.failed += len(group)
                for job in group:
                    job.future.set_exception(e)
                continue
            done = time.perf_counter()
            with self.stats.lock:
                self.stats.requests += len(group)
                self.stats.latencies.extend(done - j.queued for j in group)
            for job, result in zip(group, results):
                job.future.set_result(result)
