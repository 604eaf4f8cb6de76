"""The built-in synthetic dataset: coloured shapes on textured backgrounds.

It lets a new user see the whole loop (train, evaluate, predict, plots) on a fresh machine
with no download. Rendering is deterministic in the seed; the result is written once as
an ordinary COCO dataset (images/ + annotations/instances_{split}.json) in a cache
folder, so every other command can read it like user data.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .dataset import DetectionDataset, Record

CLASSES = ("circle", "square", "triangle", "star")
SPLITS = {"train": 320, "val": 64}
MIN_VISIBLE = 0.4  # fraction of a shape that must stay visible for it to be labelled
VERSION = 2  # bump when the rendering changes, so stale caches are not reused


def cache_dir() -> Path:
    return Path(os.environ.get("RETINANET_CACHE", Path.home() / ".cache" / "retinanet")).expanduser()


def _background(rng: random.Random, w: int, h: int) -> Image.Image:
    """Smooth colour gradient + blurred noise + a few random stripes: enough texture that
    shape edges are not the only edges in the image."""
    nrng = np.random.default_rng(rng.randrange(2**32))
    c0, c1 = nrng.uniform(0, 255, 3), nrng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    base = c0 * (1 - t) + c1 * t  # (H or 1, W or 1, 3)
    base = np.broadcast_to(base, (h, w, 3))
    noise = nrng.normal(0, 40, (h // 8 + 1, w // 8 + 1, 3))
    noise = np.asarray(Image.fromarray(np.clip(noise + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float64) - 128
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 6)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x0, y0 = rng.randrange(w), rng.randrange(h)
        draw.line([x0, y0, x0 + rng.randint(-w, w), y0 + rng.randint(-h, h)], fill=colour, width=rng.randint(1, 4))
    return img.filter(ImageFilter.GaussianBlur(0.7))


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2), math.sin(angle + k * math.pi / 2)) for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    else:  # star: 5 outer and 5 inner points
        pts = [
            ((1.0 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5), (1.0 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5))
            for k in range(10)
        ]
    return [(cx + r * x, cy + r * y) for x, y in pts]


def render_image(rng: random.Random) -> tuple[Image.Image, list[list[float]], list[int]]:
    """One image with 1-6 shapes; returns the image, xyxy boxes of the visible parts and class indices.

    Shapes drawn later cover earlier ones. An id map drawn alongside tells which pixels
    each shape still owns: its box is the box of those pixels, and a shape with less
    than MIN_VISIBLE of its area left is not labelled (nor is it a clear object).
    """
    w, h = rng.choice([(320, 320), (384, 288), (288, 384), (448, 336), (256, 256)])
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    ids = Image.new("L", (w, h), 0)  # 0 = background, k + 1 = shape k
    id_draw = ImageDraw.Draw(ids)
    labels: list[int] = []
    full_area: list[int] = []
    for k in range(rng.randint(1, 6)):
        label = rng.randrange(len(CLASSES))
        r = rng.uniform(8, min(w, h) / 4)  # 16 .. ~80-110 px across: small, medium and large objects
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        colour = tuple(rng.randrange(30, 256) for _ in range(3))
        outline = (0, 0, 0) if rng.random() < 0.3 else None
        alone = Image.new("1", (w, h), 0)
        if CLASSES[label] == "circle":
            # an ellipse with a random aspect is still a "circle": shapes, not aspect ratios, define classes
            rx, ry = r, r * rng.uniform(0.7, 1.0)
            ellipse = [cx - rx, cy - ry, cx + rx, cy + ry]
            draw.ellipse(ellipse, fill=colour, outline=outline)
            id_draw.ellipse(ellipse, fill=k + 1)
            ImageDraw.Draw(alone).ellipse(ellipse, fill=1)
        else:
            pts = _polygon(CLASSES[label], cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw.polygon(pts, fill=colour, outline=outline)
            id_draw.polygon(pts, fill=k + 1)
            ImageDraw.Draw(alone).polygon(pts, fill=1)
        labels.append(label)
        full_area.append(int(np.asarray(alone).sum()))
    id_map = np.asarray(ids)
    boxes, kept = [], []
    for k, label in enumerate(labels):
        ys, xs = np.nonzero(id_map == k + 1)
        if len(xs) < MIN_VISIBLE * max(full_area[k], 1):
            continue
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
        kept.append(label)
    return img, boxes, kept


def render(root: Path, seed: int = 0, splits: dict[str, int] | None = None, progress: bool = True) -> Path:
    """Write the dataset under ``root`` (COCO layout) unless it is already complete there."""
    splits = splits or SPLITS
    if (root / "COMPLETE").is_file():
        return root
    import shutil

    from tqdm import tqdm

    final, root = root, root.with_name(f"{root.name}.tmp-{os.getpid()}")  # rename when complete

    for split, count in splits.items():
        rng = random.Random(f"{seed}-{split}")
        images, annotations = [], []
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(count), desc=f"rendering synthetic {split}", disable=not progress, leave=False):
            img, boxes, labels = render_image(rng)
            name = f"{split}_{i:04d}.jpg"
            img.save(root / "images" / split / name, quality=92)
            images.append({"id": i + 1, "file_name": f"{split}/{name}", "width": img.width, "height": img.height})
            for (x1, y1, x2, y2), label in zip(boxes, labels):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": label + 1,
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "area": round((x2 - x1) * (y2 - y1), 2),
                        "iscrowd": 0,
                    }
                )
        coco = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)],
        }
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    (root / "COMPLETE").write_text("ok\n")
    try:
        os.rename(root, final)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(root, ignore_errors=True)
    return final


def synthetic_root(seed: int = 0) -> Path:
    return cache_dir() / f"synthetic-v{VERSION}-seed{seed}"


def load_synthetic(split: str = "train", seed: int = 0, progress: bool = True) -> DetectionDataset:
    """The synthetic dataset as a DetectionDataset (rendered on first use)."""
    if split not in SPLITS:
        raise ValueError(f"synthetic dataset has splits {', '.join(SPLITS)}, not {split!r}")
    root = render(synthetic_root(seed), seed, progress=progress)
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    per_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]].append(a)
    records = []
    for im in coco["images"]:
        anns = per_image[im["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        records.append(
            Record(
                image_path=root / "images" / im["file_name"],
                image_id=im["id"],
                width=im["width"],
                height=im["height"],
                boxes=np.array(boxes, np.float32).reshape(-1, 4),
                labels=np.array([a["category_id"] - 1 for a in anns], np.int64),
            )
        )
    return DetectionDataset(records, list(CLASSES), [k + 1 for k in range(len(CLASSES))], root=root, format="synthetic")
