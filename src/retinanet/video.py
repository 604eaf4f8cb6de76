"""Video files, network video streams and webcams through OpenCV (opencv-python-headless,
whose FFmpeg reads rtsp://, rtmp://, http MJPEG and HLS streams): RGB frames in,
annotated video out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_FPS = 30.0  # written when a stream does not report its frame rate (many webcams)
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
HTTP_SCHEMES = ("http", "https")  # an image or a stream: retinanet.sources asks the server which
STREAM_TIMEOUT_MS = 30_000  # a stream that does not open, or sends no frame, for this long ends


def is_webcam(source: str) -> bool:
    """A bare integer that is not an existing file names a webcam (OpenCV device index)."""
    return source.strip().isdigit() and not Path(source).exists()


def is_stream(source: str) -> bool:
    """A network address OpenCV reads as a video stream (rtsp://, rtmp://, http(s)://, ...)."""
    return "://" in source and urlsplit(source.strip()).scheme.lower() in STREAM_SCHEMES


def is_video(source: str) -> bool:
    """A webcam, a video file, or a stream address that is not http(s) (an http(s) address
    may be an image: retinanet.sources.source_kind decides)."""
    if is_stream(source) and urlsplit(source.strip()).scheme.lower() not in HTTP_SCHEMES:
        return True
    return is_webcam(source) or Path(urlsplit(source).path if is_stream(source) else source).suffix.lower() in VIDEO_SUFFIXES


def _capture(source: str, webcam: bool, stream: bool):
    import cv2

    if webcam:
        return cv2.VideoCapture(int(source))
    if stream:  # FFmpeg gives up on a silent server after the timeouts instead of waiting forever
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        return cv2.VideoCapture(source.strip(), cv2.CAP_FFMPEG, timeouts)
    return cv2.VideoCapture(str(source))


class VideoSource:
    """Frames of a video file, stream or webcam as (H, W, 3) uint8 RGB arrays."""

    def __init__(self, source: str, max_frames: int | None = None):
        import cv2

        self.name = source
        self.webcam = is_webcam(source)
        self.stream = not self.webcam and is_stream(source)
        if not self.webcam and not self.stream and not Path(source).is_file():
            raise FileNotFoundError(f"{source}: video file not found")
        self.cap = _capture(source, self.webcam, self.stream)
        if not self.cap.isOpened():
            what = f"webcam {source}" if self.webcam else f"{source}"
            raise RuntimeError(f"{what}: OpenCV cannot open this {'video stream' if self.stream else 'video'}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else DEFAULT_FPS
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.total = None if self.webcam or self.stream or not 0 < count < 2**31 else int(count)
        if max_frames is not None:
            self.total = max_frames if self.total is None else min(self.total, max_frames)
        self.max_frames = max_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        n = 0
        try:
            while self.max_frames is None or n < self.max_frames:
                ok, frame = self.cap.read()
                if not ok:
                    break
                n += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            self.cap.release()
        if n == 0:
            raise RuntimeError(f"{self.name}: no frame could be decoded")


class VideoSink:
    """Writes (H, W, 3) uint8 RGB frames to an mp4 file (codec mp4v); opened on the first frame."""

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.fps = fps
        self.writer = None

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise RuntimeError(f"{self.path}: OpenCV cannot write this video")
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
