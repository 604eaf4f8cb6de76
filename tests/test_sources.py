"""Sources: lazy streaming over folders, http(s) image URLs (downloaded into memory, size
and time capped, one-line errors naming the URL), MJPEG streams over http, and
`retinanet predict URL...`. A local http.server on 127.0.0.1 stands in for the network."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
from PIL import Image


from retinanet import sources
from retinanet.api import Detector
from retinanet.cli import main
from retinanet.config import PredictConfig
from retinanet.predict import output_names, predict, resolve_sources
from retinanet.sources import UrlError, fetch, source_kind, url_file_name, url_kind, video_stem
from retinanet.video import is_stream, is_video

PHOTO = "000000000034.jpg"
FRAMES = 5


def _frames(path: Path) -> list[bytes]:
    """FRAMES JPEGs of a real photo, panning (320 x 240)."""
    rgb = np.asarray(Image.open(path).convert("RGB").resize((320, 240)))
    out = []
    for k in range(FRAMES):
        buf = io.BytesIO()
        Image.fromarray(np.roll(rgb, 16 * k, axis=1)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class _Handler(BaseHTTPRequestHandler):
    photo: ClassVar[bytes] = b""
    frames: ClassVar[list[bytes]] = []
    dripped: ClassVar[list[int]] = []  # bytes each dripping reply got out before its client hung up
    DRIPS = 100  # a dripping reply sends this many single bytes, 0.2 s apart (20 s)

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: bytes, kind: str, length: bool = True, code: int = 200) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        routes = {
            "/photo.jpg": lambda: self._send(self.photo, "image/jpeg"),
            "/photo": lambda: self._send(self.photo, "image/jpeg"),  # no suffix: asked for its type
            "/unsized.jpg": lambda: self._send(self.photo, "image/jpeg", length=False),
            "/page": lambda: self._send(b"<html>hello</html>", "text/html"),
            "/text.jpg": lambda: self._send(b"not a picture", "image/jpeg"),
            "/live": self._mjpeg,
            "/cam2/live": self._mjpeg,  # another camera, the same last path part
            "/slow.jpg": self._slow,
            "/drip.jpg": self._drip,
            "/drip-headers": self._drip_headers,
            "/to-file.jpg": self._redirect,
        }
        route = routes.get(self.path, lambda: self._send(b"nothing here", "text/plain", code=404))
        try:
            route()
        except (BrokenPipeError, ConnectionResetError):  # a client that stops reading: the type probe, a cap
            pass

    def _mjpeg(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for f in self.frames:
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(f) + f + b"\r\n")

    def _slow(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        for i in range(0, len(self.photo), 4096):
            self.wfile.write(self.photo[i : i + 4096])
            self.wfile.flush()
            time.sleep(0.2)

    def _drip(self):
        """A large Content-Length, then one byte every 0.2 s (for at most 20 s)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.photo)))
        self.end_headers()
        self._drip_bytes(self.photo[: self.DRIPS])

    def _drip_bytes(self, data: bytes) -> None:
        """One byte every 0.2 s; records how many got out before the client hung up."""
        sent = 0
        try:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                sent += 1
                time.sleep(0.2)
        finally:
            self.dripped.append(sent)

    def _drip_headers(self):
        """The status line, then a header one byte every 0.2 s (for at most 20 s)."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Slow: ")
        self._drip_bytes(b"a" * self.DRIPS)

    def _redirect(self):
        self.send_response(302)
        self.send_header("Location", "file:///etc/passwd")
        self.end_headers()


@pytest.fixture(scope="module")
def server(coco128):
    _Handler.photo = (coco128 / "train2017" / PHOTO).read_bytes()
    _Handler.frames = _frames(coco128 / "train2017" / PHOTO)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_image_url_gives_the_files_detections(onnx_detector, server, coco128):
    from_file = onnx_detector.predict(coco128 / "train2017" / PHOTO)
    for url in (f"{server}/photo.jpg", f"{server}/photo"):
        r = onnx_detector.predict(url)
        assert r.source == url and r.image_size == from_file.image_size and len(r) > 5
        np.testing.assert_array_equal(r.boxes, from_file.boxes)
        np.testing.assert_array_equal(r.labels, from_file.labels)
    both = onnx_detector.predict([f"{server}/photo.jpg", coco128 / "train2017" / PHOTO])
    assert isinstance(both, list) and len(both) == 2


def test_url_failures_are_one_line_naming_the_url(onnx_detector, server, monkeypatch):
    cases = {
        "/missing.jpg": r"cannot download \(HTTP 404",
        "/to-file.jpg": "file:///etc/passwd.*(not allowed|not an http)",  # never followed
        "/page": r"neither an image nor a video stream \(Content-Type text/html\)",
        "/text.jpg": "cannot decode image",
    }
    for path, why in cases.items():
        with pytest.raises(UrlError if path != "/text.jpg" else ValueError, match=why) as e:
            onnx_detector.predict(f"{server}{path}")
        assert str(e.value).startswith(f"{server}{path}: ") and "\n" not in str(e.value)
    monkeypatch.setattr(sources, "URL_MAX_BYTES", 20_000)  # the photo is larger
    with pytest.raises(UrlError, match=r"MiB, above the download limit"):
        fetch(f"{server}/photo.jpg")
    with pytest.raises(UrlError, match=r"larger than the download limit"):  # no Content-Length: counted while reading
        fetch(f"{server}/unsized.jpg")
    monkeypatch.setattr(sources, "URL_MAX_BYTES", 2**26)
    monkeypatch.setattr(sources, "URL_TIMEOUT_S", 0.5)
    with pytest.raises(UrlError, match=f"{server}/slow.jpg: download took longer than 0.5 s"):
        fetch(f"{server}/slow.jpg")  # how soon it ends: the dripping-server test below
    with pytest.raises(UrlError, match="http://127.0.0.1:9/x.jpg: cannot download"):
        fetch("http://127.0.0.1:9/x.jpg")  # nothing listens on the discard port


def test_a_server_dripping_bytes_is_cut_off_at_the_time_limit(server, monkeypatch):
    """A byte every 0.2 s keeps every single read alive: the limit is on the whole
    download, body and headers alike. Checked by what the server got out, not by a clock:
    with a 1 s limit the client hangs up after about 5 of the 100 bytes; without one it
    reads them all."""
    cases = [
        ("/drip.jpg", "download took longer than 1 s", lambda url: fetch(url, timeout=1.0)),
        ("/drip-headers", "no answer within 1 s", lambda url: fetch(url, timeout=1.0)),
        ("/drip-headers", "no answer within 1 s", url_kind),  # the Content-Type probe, under URL_TIMEOUT_S
    ]
    monkeypatch.setattr(sources, "URL_TIMEOUT_S", 1.0)
    for path, why, call in cases:
        _Handler.dripped.clear()
        with pytest.raises(UrlError) as e:
            call(f"{server}{path}")
        assert str(e.value) == f"{server}{path}: {why}"
        for _ in range(250):  # the reply ends at the client's hang-up, or after its 20 s drip
            if _Handler.dripped:
                break
            time.sleep(0.1)
        assert _Handler.dripped and _Handler.dripped[0] < _Handler.DRIPS // 2, (path, _Handler.dripped)
    assert fetch(f"{server}/photo.jpg", timeout=1.0) == _Handler.photo  # a prompt server is unaffected


def test_mjpeg_stream_one_result_per_frame(onnx_detector, server):
    url = f"{server}/live"
    assert source_kind(url) == "video"
    with pytest.raises(ValueError, match=f"{url}: a video gives one result per frame: use predict"):
        onnx_detector.predict(url)
    results = list(onnx_detector.predict(url, stream=True))
    assert [r.frame for r in results] == list(range(FRAMES))
    assert all(r.source == url and r.image_size == (240, 320) for r in results)
    assert not np.array_equal(results[0].boxes, results[-1].boxes)  # the scene pans


def test_predict_command_on_urls_and_a_stream(exported, server, tmp_path, capsys):
    out = tmp_path / "out"
    image_url, stream_url = f"{server}/photo.jpg", f"{server}/live"
    assert main(["predict", image_url, stream_url, "--model", str(exported[1]), "--out", str(out), "--conf", "0.03"]) == 0
    data = json.loads((out / "detections.json").read_text())
    assert [i["file_name"] for i in data["images"]] == [image_url] + [stream_url] * FRAMES
    assert [i.get("frame") for i in data["images"]] == [None, *range(FRAMES)]
    assert Image.open(out / "photo.jpg").size == (640, 425)  # the annotated image, named after the URL
    cap = cv2.VideoCapture(str(out / "live.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    cap.release()
    assert main(["predict", f"{server}/missing.jpg", "--model", str(exported[1]), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert f"{server}/missing.jpg: cannot download (HTTP 404" in err and "Traceback" not in err


def test_stream_decodes_a_folder_one_batch_at_a_time(exported, coco128, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    names = sorted(p.name for p in (coco128 / "train2017").glob("*.jpg"))[:6]
    for name in names:
        (folder / name).symlink_to(coco128 / "train2017" / name)
    reads: list[str] = []
    real_reader = sources.read_image_for

    def counting_reader(path, min_side=None):
        reads.append(Path(path).name)
        return real_reader(path, min_side)

    monkeypatch.setattr(sources, "read_image_for", counting_reader)
    det = Detector(exported[1], conf=0.03, batch_size=2)
    results = det.predict(folder, stream=True)
    assert reads == []  # nothing decoded before the first result is asked for
    first = next(results)
    assert first.source == str(folder / names[0]) and reads == names[:2]
    rest = list(results)
    assert [r.source for r in rest] == [str(folder / n) for n in names[1:]] and reads == names
    with pytest.raises(FileNotFoundError, match="missing: image file not found"):
        det.predict(tmp_path / "missing", stream=True)  # checked at the call, not at the first next()


def test_network_streams_stop_at_a_default_cap_and_say_so(exported, server, tmp_path, capsys):
    url = f"{server}/live"
    det = Detector(exported[1], conf=0.03, batch_size=2)
    cfg = PredictConfig(out=str(tmp_path / "capped"), stream_max_frames=3, save=False)
    assert predict(det, resolve_sources([url]), cfg).images == 3
    notes = [line for line in capsys.readouterr().err.splitlines() if "stopped after" in line]
    assert notes == [f"{url}: stopped after 3 frames, the default for a network stream; give --max-frames N to read more"]
    cfg = PredictConfig(out=str(tmp_path / "chosen"), stream_max_frames=3, max_frames=4, save=False)
    assert predict(det, resolve_sources([url]), cfg).images == 4  # --max-frames overrides the default
    cfg = PredictConfig(out=str(tmp_path / "ended"), stream_max_frames=FRAMES + 5, save=False)
    assert predict(det, resolve_sources([url]), cfg).images == FRAMES  # a stream that ends before the cap
    assert "stopped after" not in capsys.readouterr().err
    assert PredictConfig().stream_max_frames == 9000 and PredictConfig().max_frames is None


def test_streams_with_the_same_name_do_not_overwrite_each_other(exported, server, tmp_path):
    out = tmp_path / "out"
    cams = [f"{server}/live", f"{server}/cam2/live"]
    argv = ["predict", *cams, f"{server}/photo.jpg", "--model", str(exported[1]), "--out", str(out), "--conf", "0.03"]
    assert main([*argv, "--save-txt", "--max-frames", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.mp4")) == ["live.mp4", "live_1.mp4"]
    assert sorted(p.name for p in (out / "labels").glob("live*.txt")) == [
        "live_000000.txt", "live_000001.txt", "live_1_000000.txt", "live_1_000001.txt"
    ]  # fmt: skip
    data = json.loads((out / "detections.json").read_text())
    assert [i["file_name"] for i in data["images"]] == [f"{server}/photo.jpg", cams[0], cams[0], cams[1], cams[1]]
    assert output_names([Path("a/live.jpg")], ["rtsp://cam1/live", "rtsp://cam2/live", "clips/live.mp4", "0"]) == [
        "live.jpg", "live", "live_1", "live_2", "webcam0"
    ]  # fmt: skip


def test_names_from_urls_are_safe_file_names():
    assert url_file_name("http://h/a/photo.jpg?x=1") == "photo.jpg"
    assert url_file_name("http://h/a/..%2F..%2Fetc%2Fpasswd") == "_2F.._2Fetc_2Fpasswd"
    assert url_file_name("http://h/..") == "image" and url_file_name("http://h/") == "image"
    assert url_file_name("http://h/.hidden") == "hidden"
    assert output_names([Path("a/photo.jpg"), "http://h/photo.jpg", "http://g/photo.jpg"]) == [
        "photo.jpg", "photo_1.jpg", "photo_2.jpg"
    ]  # fmt: skip
    assert video_stem("rtsp://cam.local:554/live/ch1") == "ch1" and video_stem("rtsp://cam.local") == "stream"
    assert video_stem("0") == "webcam0" and video_stem("clips/a.mp4") == "a"


def test_stream_addresses_are_videos():
    for url in ("rtsp://cam.local:554/live", "rtmp://h/app/key", "udp://239.0.0.1:1234", "http://h/clip.mp4"):
        assert is_stream(url) and is_video(url) and source_kind(url) == "video"  # no network asked
    assert not is_video("http://h/a.jpg") and source_kind("http://h/a.jpg") == "image"
    assert not is_stream("photos/a.jpg") and not is_stream("C:\\photos\\a.jpg")
