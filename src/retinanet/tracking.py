"""Multi-object tracking on video: ByteTrack (the ``trackers`` package, Apache-2.0) fed by a
Detector's Results, one frame at a time, in order.

ByteTrack associates twice per frame: first the confident detections (score >= the
detector's threshold) with the tracks by IoU after a Kalman prediction, then the
remaining low-scoring ones (down to LOW_CONF) with the tracks still unmatched, which keeps
an object's track through frames where its score dips. So the detector runs at
min(LOW_CONF, its threshold) when tracking, and only detections that belong to a track
are reported, each with its track id.

    tracker = Tracker(conf=det.conf, frame_rate=30)
    for frame in frames:
        tracked = tracker.update(det.predict(frame, conf=tracker.detector_conf))
        tracked.track_ids                       # (D,) ids, stable while the object stays in view
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .results import Result

LOW_CONF = 0.1  # ByteTrack's second association uses detections down to this score
LOST_TRACK_FRAMES = 30  # a track unseen for this many frames (at 30 fps: a second) is dropped
INSTALL_HINT = "tracking needs the trackers package: pip install supervision && pip install --no-deps trackers"


class Tracker:
    """ByteTrack over one video: ``update`` each frame's Result in order; ``reset`` between videos."""

    def __init__(self, conf: float, frame_rate: float = 30.0, lost_track_frames: int = LOST_TRACK_FRAMES, min_frames: int = 1):
        try:
            from trackers import ByteTrackTracker
        except ImportError as e:
            raise RuntimeError(f"{INSTALL_HINT} ({e})") from None
        if not 0 < conf < 1:
            raise ValueError(f"tracking needs a score threshold in (0, 1), got {conf}")
        self.conf = float(conf)
        self.detector_conf = min(LOW_CONF, self.conf)
        self._make = lambda: ByteTrackTracker(
            lost_track_buffer=lost_track_frames,
            frame_rate=float(frame_rate) if frame_rate and frame_rate > 0 else 30.0,
            track_activation_threshold=self.conf,  # a new track starts from a confident detection
            high_conf_det_threshold=self.conf,  # the first association's detections
            minimum_consecutive_frames=min_frames,
        )
        self.tracker = self._make()

    def reset(self) -> None:
        self.tracker = self._make()

    def update(self, result: Result) -> Result:
        """One frame's detections -> those that belong to a track, with their track ids."""
        import supervision as sv

        dets = sv.Detections(
            xyxy=result.boxes.astype(np.float32).reshape(-1, 4),
            confidence=result.scores.astype(np.float32),
            class_id=result.labels.astype(np.int64),
            data={"index": np.arange(len(result))},
        )
        out = self.tracker.update(dets)
        keep = np.asarray(out.tracker_id) >= 0 if out.tracker_id is not None else np.zeros(len(out), bool)
        idx = np.asarray(out.data["index"])[keep].astype(np.int64)
        order = np.argsort(-result.scores[idx], kind="stable")  # best first, as every Result
        idx = idx[order]
        ids = np.asarray(out.tracker_id)[keep][order].astype(np.int64) + 1  # 1, 2, ... as MOTChallenge numbers them
        cats = result.category_ids if len(result.category_ids) == len(result) else []
        return dataclasses.replace(
            result,
            boxes=result.boxes[idx].reshape(-1, 4),
            scores=result.scores[idx],
            labels=result.labels[idx],
            names=[result.names[i] for i in idx.tolist()],
            category_ids=[cats[i] for i in idx.tolist()] if cats else [],
            track_ids=ids,
        )


def mot_lines(frame: int, result: Result) -> list[str]:
    """MOTChallenge text lines of one frame (1-based): frame, id, left, top, width, height,
    score, -1, -1, -1."""
    lines = []
    for (x1, y1, x2, y2), score, tid in zip(result.boxes.tolist(), result.scores.tolist(), (result.track_ids if result.track_ids is not None else []).tolist()):
        lines.append(f"{frame + 1},{tid},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f},-1,-1,-1")
    return lines
