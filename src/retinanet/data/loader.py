"""From a DetectionDataset to padded training / evaluation batches.

    loader = build_loader(dataset, input_size=320, train=True, batch_size=8, workers=2, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)              # reshuffles and re-draws every augmentation
        for batch in loader:                 # Batch: images (N, 3, S, S), boxes (N, G, 4), ...
            batch = batch.to(device)
            losses = model.loss(model(batch.images), batch.images.shape[-2:], batch.boxes, batch.labels)

Reproducibility: the sampler hands every worker (epoch, index) pairs, and each sample's
augmentation runs on torch's generator seeded from (seed, epoch, index). The same seed and
epoch therefore give the same batches whatever the number of workers, and a resumed run
re-draws exactly what the interrupted one would have. The shuffle order comes from
DistributedSampler's (seed, epoch) permutation, with one replica when not distributed.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..config import AugmentConfig
from .labels import PAD_LABEL
from .dataset import DetectionDataset
from .cache import ImageSource
from .mosaic import mosaic, random_centre
from .transforms import DetectionTransforms, Sample, make_sample, unpack


@dataclass
class Batch:
    """A padded batch; G = the most boxes in any image of the batch (0 when none has any)."""

    images: Tensor
    """(N, 3, S, S) float RGB in [0, 1], letterboxed (content top-left, black padding)."""
    boxes: Tensor
    """(N, G, 4) float xyxy in input pixels; padding slots are zeros."""
    labels: Tensor
    """(N, G) long: class 0..K-1, CROWD_LABEL for an ignore region, PAD_LABEL for padding."""
    image_ids: Tensor
    """(N,) long: the dataset's own image id (Record.image_id)."""
    scales: Tensor
    """(N,) float: input pixels per original pixel; detections / scale = original pixels."""
    orig_sizes: Tensor
    """(N, 2) long: original (height, width)."""

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this on custom batch types.
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def collate(samples: list[tuple[Tensor, dict[str, Any]]]) -> Batch:
    """Stack images; pad boxes with zeros and labels with PAD_LABEL to the batch's most
    boxes G (G = 0 when no image has a box: RetinaNet.loss then trains every anchor as
    background)."""
    if not samples:
        raise ValueError("collate got an empty list of samples")
    n = len(samples)
    g = max(len(t["labels"]) for _, t in samples)
    boxes = torch.zeros(n, g, 4)
    labels = torch.full((n, g), PAD_LABEL, dtype=torch.long)
    for i, (_, t) in enumerate(samples):
        k = len(t["labels"])
        boxes[i, :k] = t["boxes"]
        labels[i, :k] = t["labels"]
    return Batch(
        images=torch.stack([im for im, _ in samples]),  # (N, 3, S, S)
        boxes=boxes,
        labels=labels,
        image_ids=torch.tensor([int(t["image_id"]) for _, t in samples], dtype=torch.long),
        scales=torch.tensor([float(t["scale"]) for _, t in samples], dtype=torch.float32),
        orig_sizes=torch.tensor([tuple(t["orig_size"]) for _, t in samples], dtype=torch.long),
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class AugmentedDataset(Dataset):
    """A torch Dataset over a DetectionDataset: decoded, augmented (train) or letterboxed
    (eval) samples.

    ``ds[i]`` or ``ds[(epoch, i)]`` -> (image (3, S, S) float in [0, 1], target) with
    target = {boxes (G, 4) float xyxy input pixels, labels (G,) long (CROWD_LABEL for
    ignore regions), image_id int, scale float, orig_size (H, W)}. A plain index uses
    ``self.epoch``. In training, ``scale`` is the resize factor (crop offsets and flips
    are not undone by it); in evaluation it is exactly the letterbox scale.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        input_size: int,
        train: bool,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache: str = "none",
        progress: bool = False,
    ):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.input_size = input_size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.transforms = DetectionTransforms(input_size, train, augment)
        # Decoded no bigger than the transforms can use (JPEG draft mode), or kept in memory.
        self.images = ImageSource(dataset, self.transforms.source_side, cache, progress)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> Sample:
        """One record's image (uint8, maybe reduced) wrapped with its boxes scaled to it."""
        r = self.dataset[index]
        image, fx, fy = self.images.read(index)  # (3, H, W) uint8, channels-last view
        boxes = r.boxes if (fx, fy) == (1.0, 1.0) else r.boxes * np.array([fx, fy, fx, fy], np.float32)
        return make_sample(image, boxes, r.labels, r.ignore, scale=fx if r.width >= r.height else fy)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        t = self.transforms
        # Seed only the CPU generator, and restore it afterwards: loading in the main
        # process (workers=0) must not disturb the training loop's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            if t.mosaic > 0 and float(torch.rand(())) < t.mosaic:
                others = torch.randint(0, len(self), (3,)).tolist()
                tiles = [t.prepare(*self.load(j)) for j in [index, *others]]
                sample = mosaic(tiles, t.canvas, random_centre(t.canvas))
            else:
                sample = t.place(*t.prepare(*self.load(index)))
            image, boxes, labels, scale = unpack(t.finish(*sample))
        r = self.dataset[index]
        target = {
            "boxes": boxes,
            "labels": labels,
            "image_id": int(r.image_id),
            "scale": scale,
            "orig_size": (int(r.height), int(r.width)),
        }
        return image, target


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs from a DistributedSampler, so workers know the epoch
    (persistent workers keep their own copy of the dataset and never see attribute changes)."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0  # samples the next pass leaves out at its start (a resumed epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip, self.skip = self.epoch, self.skip, 0
        for i, index in enumerate(self.sampler):
            if i >= skip:
                yield epoch, index

    def __len__(self) -> int:
        return len(self.sampler)


class DetectionLoader:
    """A DataLoader of Batches with an epoch: ``set_epoch(e)`` before iterating draws the
    shuffle order and augmentation of epoch e (seed, epoch, index). A pass started without
    a new set_epoch advances the epoch by one, so forgetting it never repeats an epoch's
    augmentation."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler):
        self.loader = loader
        self.sampler = sampler
        self.dataset: AugmentedDataset = loader.dataset
        self._passes = 0
        self._epoch_was_set = False

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.sampler.set_epoch(epoch)
        self._epoch_was_set = True

    def skip_batches(self, n: int) -> None:
        """Start the next pass at batch ``n`` of its epoch, with the same batches after it as
        a full pass (the order and augmentation depend only on seed, epoch and index)."""
        if n < 0 or n > len(self):
            raise ValueError(f"cannot skip {n} of {len(self)} batches")
        self.sampler.skip = n * (self.loader.batch_size or 1)

    def __iter__(self) -> Iterator[Batch]:
        if self._passes > 0 and not self._epoch_was_set:
            self.sampler.set_epoch(self.sampler.epoch + 1)
        self._epoch_was_set = False
        self._passes += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def close(self) -> None:
        """End the worker processes now (they persist between epochs). Workers ignore SIGTERM
        (_init_worker), so ones left to the garbage collector at interpreter exit, where
        multiprocessing ends daemonic children with SIGTERM and then waits for them, would
        hang the exit."""
        live = getattr(self.loader, "_iterator", None)  # torch keeps a persistent-workers iterator here
        shutdown = getattr(live, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self.loader._iterator = None


def _init_worker(worker_id: int) -> None:
    # One intra-op thread per worker: workers already run in parallel, and more threads
    # on a small machine only fight the training process for cores.
    torch.set_num_threads(1)
    # A stop signal is the training process's to handle (it saves, then ends its workers);
    # one sent to the whole process group (systemd, Slurm, timeout) must not kill a worker
    # first, or the loader fails before anything is saved. Workers still end with their parent.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_seed = torch.initial_seed() % 2**32  # distinct per worker, derived from the loader's generator
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def build_loader(
    dataset: DetectionDataset,
    input_size: int,
    train: bool,
    batch_size: int = 8,
    workers: int = 2,
    seed: int = 0,
    augment: AugmentConfig | None = None,
    distributed: bool = False,
    drop_last: bool | None = None,
    pin_memory: bool | None = None,
    cache: str = "none",
    progress: bool = False,
) -> DetectionLoader:
    """Batches of ``dataset`` for training (shuffled, augmented) or evaluation (in order,
    letterboxed only).

    workers: loader processes (0 = load in this process); they persist across epochs.
    distributed: shard with DistributedSampler over torch.distributed's world (must be
      initialised); in evaluation the sampler repeats a few images so every process gets
      the same count (their image_ids repeat too).
    drop_last: default True for training (no ragged last batch), False for evaluation;
      falls back to False when the (per-process) dataset is smaller than one batch.
    pin_memory: default True when CUDA is available.
    cache: 'ram' decodes every image once, here, and keeps it in memory at the size the
      augmentation can use (see cache.py); 'none' decodes from the files every epoch.
    progress: a progress bar while the cache fills.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset has no images")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed loading needs torch.distributed initialised (torchrun + init_process_group)")
    torch_ds = AugmentedDataset(dataset, input_size, train, augment, seed, cache, progress)
    one = {} if distributed else {"num_replicas": 1, "rank": 0}  # not distributed: one replica
    sampler = EpochSampler(DistributedSampler(torch_ds, shuffle=train, seed=seed, **one))
    if drop_last is None:
        drop_last = train and len(sampler) >= batch_size
    elif drop_last and len(sampler) < batch_size:
        raise ValueError(
            f"drop_last with {len(sampler)} images per process and batch size {batch_size} leaves no batch"
        )
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    loader = DataLoader(
        torch_ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=_init_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return DetectionLoader(loader, sampler)
