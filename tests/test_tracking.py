"""Tracking (tracking.py, ByteTrack from the trackers package): ids stay with their object
through scripted detections, a low-scoring frame keeps its track, and `retinanet track`
on a video of shapes moving over a real photo writes one id per shape, drawn and as
MOTChallenge text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from retinanet.api import Detector
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


def _video(path, background) -> np.ndarray:
    """Shapes moving over a real photo, written as an mp4; returns their (FRAMES, 3, 4) boxes."""
    paths = _paths()
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
