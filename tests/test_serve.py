"""`retinanet serve`: the HTTP API on a real server on 127.0.0.1 with real coco128 photos
(JSON equal to Detector.predict, the 413 / 415 / 422 / 503 refusals, concurrent requests
sharing forward passes), and the web page driven in headless Chromium."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx  # the set-up installs it: a missing package fails here, never skips
import pytest
import uvicorn

from retinanet.api import Detector
from retinanet.serve import ServeConfig, create_app

CONF = 0.03  # the untrained test model scores low
PHOTO = "000000000009.jpg"  # 640 x 480, bowls and broccoli


@contextmanager
def running(detector: Detector, cfg: ServeConfig):
    """A uvicorn server for ``detector`` on a free port of 127.0.0.1, stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(detector, cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(exported):
    with running(Detector(exported[1], conf=CONF), ServeConfig(max_upload_mb=1, batch_window_ms=300)) as url:
        yield url


def _photo(coco128: Path, name: str = PHOTO) -> Path:
    return coco128 / "train2017" / name


def test_predict_equals_the_detector(server, exported, coco128):
    photo = _photo(coco128)
    expected = Detector(exported[1], conf=CONF).predict(photo).to_dict()
    with httpx.Client(base_url=server, timeout=60) as client:
        as_form = client.post("/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
        as_body = client.post("/predict", content=photo.read_bytes()).json()
        stricter = client.post("/predict?conf=0.05", content=photo.read_bytes()).json()
    assert len(expected["detections"]) > 5
    for got in (as_form, as_body):
        assert got["detections"] == expected["detections"] and (got["height"], got["width"]) == (480, 640)
        assert got["conf"] == CONF  # the model's threshold when none is asked for
    assert as_form["source"] == photo.name
    assert stricter["conf"] == 0.05 and stricter["detections"] == [d for d in expected["detections"] if d["score"] >= 0.05]
    assert 0 < len(stricter["detections"]) < len(expected["detections"])


def test_model_health_and_metrics(server, exported):
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        info = client.get("/model").json()
        metrics = client.get("/metrics").json()
    assert info["classes"] == ["cat", "dog", "bird"] and info["format"] == "onnx" and info["conf"] == CONF
    assert info["model"] == exported[1].name and info["input_size"] == 128 and info["version"]
    assert {"requests", "refused", "forward_passes", "batch_sizes", "latency_ms"} <= set(metrics)


def test_refusals_are_clear(server, coco128, tmp_path, monkeypatch):
    with httpx.Client(base_url=server, timeout=30) as client:
        big = client.post("/predict", content=b"\xff" * 1_200_000)
        assert big.status_code == 413 and "above the limit of 1 MB" in big.json()["detail"]
        junk = client.post("/predict", files={"file": ("notes.jpg", b"not an image at all", "image/jpeg")})
        assert junk.status_code == 415 and junk.json()["detail"].startswith("notes.jpg: cannot decode image")
        nofile = client.post("/predict", files={"other": ("a.jpg", b"x", "image/jpeg")})
        assert nofile.status_code == 415 and "no file field 'file'" in nofile.json()["detail"]
        empty = client.post("/predict", content=b"")
        assert empty.status_code == 415
        bad_conf = client.post("/predict?conf=2", content=_photo(coco128).read_bytes())
        assert bad_conf.status_code == 422 and "conf must be in [0, 1]" in bad_conf.json()["detail"]
        monkeypatch.setenv("RETINANET_MAX_PIXELS", "100000")  # the pixel limit of image files, read per image
        huge = client.post("/predict", content=_photo(coco128).read_bytes())
        assert huge.status_code == 413 and "megapixels, above the limit" in huge.json()["detail"]


def test_concurrent_requests_share_forward_passes(server, coco128):
    photo = _photo(coco128).read_bytes()
    with httpx.Client(base_url=server, timeout=60) as client:
        before = client.get("/metrics").json()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: client.post("/predict", content=photo), range(8)))
        after = client.get("/metrics").json()
    assert all(a.status_code == 200 for a in answers)
    assert len({str(a.json()["detections"]) for a in answers}) == 1
    assert after["requests"] - before["requests"] == 8
    assert after["forward_passes"] - before["forward_passes"] < 8  # batched within the 300 ms window
    assert after["latency_ms"]["p50"] > 0


def test_a_full_queue_answers_503(exported, coco128):
    det = Detector(exported[1], conf=CONF)
    run = det.backend.run

    def slow(*args, **kwargs):  # a model busy for a while, so that the queue fills
        time.sleep(1.0)
        return run(*args, **kwargs)

    det.backend.run = slow
    photo = _photo(coco128).read_bytes()
    with running(det, ServeConfig(max_queue=2, max_batch=1, batch_window_ms=0)) as url, httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: client.post("/predict", content=photo), range(6)))
        codes = sorted(a.status_code for a in answers)
        refused = [a for a in answers if a.status_code == 503]
        assert codes.count(200) >= 3 and refused  # one running and two waiting get served
        assert refused[0].headers["retry-after"] == "1" and "busy" in refused[0].json()["detail"]
        assert client.get("/metrics").json()["refused"] == len(refused)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it (never `playwright install`)


def test_the_page_in_headless_chromium(server, coco128):
    from playwright.sync_api import sync_playwright  # installed by the set-up: missing fails, never skips

    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless"])
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('onnx')")
            assert page.input_value("#conf") == str(CONF)  # the slider starts at the model's threshold
            page.set_input_files("#file", str(_photo(coco128)))
            page.wait_for_function("Number(document.getElementById('view').dataset.drawn) > 0", timeout=60_000)
            drawn = int(page.get_attribute("#view", "data-drawn"))
            rows = page.locator("#detections tbody tr")
            assert rows.count() == drawn > 5
            assert (page.eval_on_selector("#view", "c => [c.width, c.height]")) == [640, 480]
            first = rows.nth(0).locator("td").all_inner_texts()
            assert first[1] in ("cat", "dog", "bird") and float(first[2]) >= CONF
            page.locator("#conf").fill("0.05")  # an input event, as a drag fires
            fewer = rows.count()
            assert 0 < fewer < drawn and int(page.get_attribute("#view", "data-drawn")) == fewer
            assert page.text_content("#count") == f"{fewer} of {drawn} detections"
            with_boxes = page.eval_on_selector("#view", "c => c.toDataURL()")
            page.locator("#conf").fill("1")
            assert rows.count() == 0 and page.get_attribute("#view", "data-drawn") == "0"
            assert page.eval_on_selector("#view", "c => c.toDataURL()") != with_boxes  # the boxes were pixels on the canvas
            page.locator("#conf").fill("0.05")
            scores = [float(t) for t in page.locator("#detections tbody tr td:nth-child(3)").all_inner_texts()]
            assert min(scores) >= 0.05
        finally:
            browser.close()
