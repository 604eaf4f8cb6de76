"""Tracking (tracking.py, ByteTrack from the trackers package): ids stay with their object
through scripted detections, a low-scoring frame keeps its track, `retinanet track` on a
video of shapes moving over a real photo writes one id per shape, drawn and as
MOTChallenge text, and a detector trained on the built-in shapes (once per session,
cached on disk while the package's code is unchanged) tracks them with no id switch."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import pytest
from PIL import Image, ImageDraw

import retinanet
from retinanet.api import Detector
from retinanet.config import RunConfig, preset
from retinanet.data.dataset import DetectionDataset, Record
from retinanet.data import synthetic
from retinanet.data.synthetic import cache_dir, load_synthetic
from retinanet.engine import Trainer
from retinanet.predict import Sources, predict
from retinanet.config import PredictConfig
from retinanet.results import Result
from retinanet.tracking import LOW_CONF, Tracker, mot_lines
from retinanet.video import VideoSink, VideoSource
from test_export import build_test_model

FRAMES, W, H = 24, 320, 240


def _paths() -> list[np.ndarray]:
    """(FRAMES, 3, 4) xyxy boxes of three objects moving in straight lines, all in view."""
    t = np.arange(FRAMES, dtype=np.float32)[:, None]
    starts = np.array([[10, 20], [250, 30], [40, 170]], np.float32)
    speeds = np.array([[8, 3], [-7, 4], [9, -2]], np.float32)
    sides = np.array([40, 36, 44], np.float32)
    out = []
    for (x, y), (dx, dy), s in zip(starts, speeds, sides):
        x0, y0 = x + dx * t, y + dy * t
        out.append(np.concatenate([x0, y0, x0 + s, y0 + s], axis=1))
    return np.stack(out, axis=1)  # (FRAMES, 3, 4)


def _result(boxes: np.ndarray, scores: list[float], frame: int) -> Result:
    labels = np.array([0, 1, 2][: len(boxes)])
    return Result(boxes.astype(np.float32), np.array(scores, np.float32), labels, ["cat", "dog", "bird"][: len(boxes)], (H, W), frame=frame)


def test_ids_stay_with_their_objects_through_a_score_dip():
    tracker, paths = Tracker(conf=0.4, frame_rate=30), _paths()
    seen: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for f in range(FRAMES):
        scores = [0.9, 0.15 if f in (10, 11) else 0.8, 0.7]  # object 1 dips below 0.4 but above LOW_CONF
        out = tracker.update(_result(paths[f], scores, f))
        assert np.all(np.diff(out.scores) <= 0)  # best first, as every Result
        for box, tid in zip(out.boxes, out.track_ids.tolist()):
            obj = int(np.argmin(np.abs(paths[f] - box).sum(1)))
            seen[obj].add(tid)
        if f >= 1:  # a track is confirmed on its second frame
            assert len(out) == 3, f
    assert all(len(ids) == 1 for ids in seen.values()) and len(set().union(*seen.values())) == 3
    assert min(min(ids) for ids in seen.values()) == 1  # ids start at 1, as MOTChallenge counts
    assert tracker.detector_conf == LOW_CONF


def test_low_scores_never_start_a_track_and_reset_forgets():
    tracker = Tracker(conf=0.5)
    box = np.array([[10, 10, 50, 50]], np.float32)
    for f in range(5):
        assert len(tracker.update(_result(box, [0.3], f))) == 0  # below the threshold: no new track
    for f in range(5, 8):
        out = tracker.update(_result(box, [0.9], f))
    first = int(out.track_ids[0])
    tracker.reset()
    tracker.update(_result(box, [0.9], 0))
    assert int(tracker.update(_result(box, [0.9], 1)).track_ids[0]) == 1 == first  # numbering restarts
    with pytest.raises(ValueError, match=r"score threshold in \(0, 1\)"):
        Tracker(conf=0.0)


def test_mot_lines_and_json_carry_the_ids():
    r = _result(np.array([[10.0, 20.0, 50.0, 80.0]]), [0.8], 0)
    r.track_ids = np.array([7])
    assert mot_lines(4, r) == ["5,7,10.00,20.00,40.00,60.00,0.8000,-1,-1,-1"]
    assert r.to_dict()["detections"][0]["track_id"] == 7


def _video(path, background, paths: np.ndarray | None = None) -> np.ndarray:
    """Shapes moving over a real photo, written as an mp4; returns their (FRAMES, 3, 4) boxes."""
    paths = _paths() if paths is None else paths
    sink = VideoSink(path, 10.0)
    for f in range(FRAMES):
        frame = background.copy()
        draw = ImageDraw.Draw(frame)
        (a, b, c) = paths[f]
        draw.rectangle(a.tolist(), fill=(230, 40, 40))
        draw.ellipse(b.tolist(), fill=(40, 200, 60))
        draw.polygon([(c[0], c[3]), ((c[0] + c[2]) / 2, c[1]), (c[2], c[3])], fill=(50, 60, 230))
        sink.write(np.asarray(frame))
    sink.close()
    return paths


def test_track_command_on_a_video(coco128, tmp_path, monkeypatch):
    background = Image.open(coco128 / "train2017" / "000000000009.jpg").convert("RGB").resize((W, H))
    video = tmp_path / "shapes.mp4"
    paths = _video(video, background)
    assert len(list(VideoSource(str(video)))) == FRAMES
    det = Detector(build_test_model(), conf=0.4)
    frames = iter(range(FRAMES))

    def scripted(images, conf, iou, max_det, agnostic):  # the shapes' true boxes, as a trained model finds them
        out = []
        for _ in images:
            f = next(frames)
            scores = np.array([0.9, 0.2 if f == 12 else 0.8, 0.7, 0.06], np.float32)  # and a stray low box
            boxes = np.concatenate([paths[f], [[150, 100, 160, 110]]]).astype(np.float32)
            keep = scores >= conf
            out.append((boxes[keep], scores[keep], np.array([0, 1, 2, 0])[keep]))
        return out

    monkeypatch.setattr(det.backend, "run", scripted)
    cfg = PredictConfig(out=str(tmp_path / "out"), batch=5, track=True)
    done = predict(det, Sources(images=[], videos=[str(video)]), cfg)
    assert done.images == FRAMES
    lines = (tmp_path / "out" / "tracks" / "shapes.txt").read_text().splitlines()
    rows = np.array([[float(v) for v in line.split(",")] for line in lines])
    assert set(rows[:, 0].astype(int)) == set(range(2, FRAMES + 1))  # every frame after the first
    ids_of: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for frame, tid, x, y, w, h in rows[:, :6]:
        xyxy = np.array([x, y, x + w, y + h])
        obj = int(np.argmin(np.abs(paths[int(frame) - 1] - xyxy).sum(1)))
        assert np.abs(paths[int(frame) - 1][obj] - xyxy).max() < 2.0
        ids_of[obj].add(int(tid))
    assert all(len(ids) == 1 for ids in ids_of.values()) and len(set().union(*ids_of.values())) == 3  # no id switch
    assert len(rows) == 3 * (FRAMES - 1)  # the stray 0.06 box never became a track
    assert (tmp_path / "out" / "shapes.mp4").is_file()
    coco = json.loads(done.json_path.read_text())
    assert len(coco["annotations"]) == len(rows)


def test_track_refuses_images(exported, coco128, tmp_path):
    det = Detector(exported[1])
    with pytest.raises(ValueError, match=r"--track follows objects through a video's frames; .*000000000009\.jpg is an image"):
        predict(det, Sources(images=[coco128 / "train2017" / "000000000009.jpg"], videos=[]), PredictConfig(out=str(tmp_path), track=True))


# A detector of the built-in shapes, small enough to train in about two minutes on 2
# cores: 128 px, a raised learning rate and no weight average (at 128 px the coarsest
# level's map is 1x1, and the averaged batch-norm statistics of the head there drift far
# from the live ones: with decay 0.99, validation AP50 0.17 live, 0.0 averaged). Trained on
# the shapes alone it fires on real photos' content (a static false track that a shape
# then passes over takes the shape's id). With 64 photos added as empty images it learned
# that a photo is background, shapes on it included: seeds 1 and 2 then followed a shape
# too rarely on one of the five backgrounds below (50 and 57 of 72 frame-boxes, 58 needed).
# So the last "photos" photos of coco128 join the training split with shapes drawn over
# them by the synthetic dataset's own renderer: seeds 0, 1 and 2 then follow 67 to 69 of
# 72 on every background, with no id switch, after 20 epochs and after 14; after 10, each
# seed switched an id on one or two backgrounds. The videos run over other photos.
SHAPES_RECIPE = {"input_size": 128, "epochs": 14, "lr": 0.04, "ema_decay": 0.0, "batch_size": 8, "seed": 0, "photos": 64}
BACKGROUNDS = ["000000000009", "000000000025", "000000000030", "000000000034", "000000000036"]


def _recipe_key() -> str:
    """Changes with the recipe and with any of the package's source files."""
    h = hashlib.sha256(json.dumps(SHAPES_RECIPE, sort_keys=True).encode())
    for f in sorted(Path(retinanet.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _with_shapes_on_photos(train: DetectionDataset, photos: list[Path], folder: Path) -> DetectionDataset:
    """``train`` plus one image per photo with 1-6 shapes drawn over it (synthetic.render_image
    with the photo, resized, as its background)."""
    rng, records = random.Random(1), []
    for i, photo in enumerate(photos):
        with Image.open(photo) as im:
            background = im.convert("RGB")
        with mock.patch.object(synthetic, "_background", lambda _rng, w, h: background.resize((w, h))):
            image, boxes, labels = synthetic.render_image(rng)
        image.save(folder / photo.name, quality=95)
        records.append(Record(folder / photo.name, 1_000_000 + i, image.width, image.height, boxes, labels))
    return DetectionDataset(train.records + records, train.class_names, train.category_ids, train.root, train.format)


@pytest.fixture(scope="session")
def shapes_model(coco128, tmp_path_factory) -> Path:
    cached = cache_dir() / "test-models" / f"shapes-tracker-{_recipe_key()}.pt"
    if cached.is_file():
        return cached
    photos = sorted((coco128 / "train2017").glob("*.jpg"))[-SHAPES_RECIPE["photos"]:]
    assert not {p.stem for p in photos} & set(BACKGROUNDS)
    torch.manual_seed(0)
    cfg = RunConfig(model=preset("default", input_size=SHAPES_RECIPE["input_size"]))
    cfg.data.workers = 0
    t = cfg.train
    t.epochs, t.lr, t.ema_decay, t.batch_size, t.seed = (SHAPES_RECIPE[k] for k in ("epochs", "lr", "ema_decay", "batch_size", "seed"))
    t.warmup_epochs, t.eval_every, t.loggers = 0.5, t.epochs, ()
    t.out, t.name = str(tmp_path_factory.mktemp("shapes_model")), "shapes"
    train = _with_shapes_on_photos(load_synthetic("train", progress=False), photos, tmp_path_factory.mktemp("shapes_on_photos"))
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=load_synthetic("val", progress=False))
    trainer.fit()
    trainer.close()
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(t.out) / "shapes" / "best.pt", cached.with_suffix(".tmp"))
    cached.with_suffix(".tmp").replace(cached)  # whole or absent, never half written
    return cached


def _apart_paths() -> np.ndarray:
    """(FRAMES, 3, 4) boxes of three shapes crossing the frame in their own bands (never overlapping)."""
    t = np.arange(FRAMES, dtype=np.float32)[:, None]
    starts = np.array([[10, 6], [250, 92], [30, 165]], np.float32)
    speeds = np.array([[9, 0.5], [-8, 0], [7, -0.4]], np.float32)
    sides = np.array([64, 60, 70], np.float32)
    return np.stack([np.concatenate([x + dx * t, y + dy * t, x + dx * t + s, y + dy * t + s], axis=1)
                     for (x, y), (dx, dy), s in zip(starts, speeds, sides)], axis=1)


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_a_trained_detector_tracks_shapes_without_id_switches(shapes_model, coco128, tmp_path, background):
    from trackers.eval import evaluate_mot_sequence  # CLEAR MOT, as TrackEval counts it

    image = Image.open(coco128 / "train2017" / f"{background}.jpg").convert("RGB").resize((W, H))
    paths = _video(tmp_path / "apart.mp4", image, _apart_paths())
    det = Detector(shapes_model, agnostic=True)  # at the threshold stored in the checkpoint
    done = predict(det, Sources(images=[], videos=[str(tmp_path / "apart.mp4")]), PredictConfig(out=str(tmp_path / "out"), batch=4, track=True))
    assert done.images == FRAMES
    truth = tmp_path / "truth.txt"
    truth.write_text("".join(f"{f + 1},{k + 1},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,1,1\n"
                             for f in range(FRAMES) for k, (x1, y1, x2, y2) in enumerate(paths[f].tolist())))
    clear = evaluate_mot_sequence(truth, tmp_path / "out" / "tracks" / "apart.txt").CLEAR
    assert clear.IDSW == 0  # every shape keeps one id while in view
    assert clear.CLR_TP >= 0.8 * 3 * FRAMES, clear  # and is followed (IoU >= 0.5) in most frames
