"""Decompression bombs: an image above the pixel limit is refused from its header, before
a pixel is decoded, by the reader, the data checks and predict. Large images: predict
decodes a huge JPEG reduced (draft) with its boxes in the file's pixels, and a 60-megapixel
PNG without a float copy of the whole image."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from test_export import shared_export

from retinanet.api import Detector
from retinanet.config import PostprocessConfig, PredictConfig
from retinanet.data.images import ImageError, draft_request, image_info, max_pixels, read_image
from retinanet.draw import class_color
from retinanet.predict import Sources, predict
from retinanet.preprocess import STRIP_PIXELS, resize

BOMB_SIDE = 13000  # 169 megapixels, in a PNG of a few hundred KB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path)  # 1 bit per pixel: 21 MB in memory to write
    assert path.stat().st_size < 2_000_000
    return path


def test_a_bomb_is_refused_without_decoding(bomb, monkeypatch):
    def no_decode(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decode)
    for read in (read_image, image_info, lambda p: image_info(p, decode=True)):
        with pytest.raises(ImageError, match=r"bomb.png: 13000x13000 is 169 megapixels, above the limit of 90 \(RETINANET_MAX_PIXELS\)"):
            read(bomb)


def test_the_limit_is_an_environment_setting(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setenv("RETINANET_MAX_PIXELS", "50000")
    assert max_pixels() == 50000
    with pytest.raises(ImageError, match="wide.png: 300x200 is 0 megapixels, above the limit of 0.05"):
        read_image(path)
    monkeypatch.setenv("RETINANET_MAX_PIXELS", "60000")
    assert read_image(path).shape == (3, 200, 300)
    monkeypatch.setenv("RETINANET_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="RETINANET_MAX_PIXELS='lots' is not a number"):
        max_pixels()


def test_predict_skips_a_bomb_says_so_and_stays_small(bomb, tmp_path):
    """A child process predicts the bomb beside a normal photo: the bomb is skipped with its
    reason, the photo is predicted, and the peak memory stays far below the 507 MB that the
    bomb's RGB pixels alone would take."""
    good = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (90, 120, 150)).save(good)
    (tmp_path / "in").mkdir()
    for p in (bomb, good):
        (tmp_path / "in" / p.name).symlink_to(p)
    code = (
        "import re, sys\n"
        "from retinanet.cli import main\n"
        "rc = main(['predict', sys.argv[1], '--out', sys.argv[2], '--preset', 'default'])\n"
        # VmHWM is this process's own peak: getrusage's ru_maxrss would carry over the
        # parent's (the whole test run's) across fork and exec.
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
        "print('peak_mb', int(hwm) // 1024)\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "skipped: " in out.stderr and "bomb.png: 13000x13000 is 169 megapixels" in out.stderr
    peak = int(out.stdout.split("peak_mb")[-1])
    assert peak < 1500, peak
    assert any((tmp_path / "out").rglob("photo*")), list((tmp_path / "out").rglob("*"))


# ----------------------------------------------------------------------------- large images

PEAK_CODE = (
    "import re, sys\n"
    "from retinanet.cli import main\n"
    # VmHWM is this process's own peak (see the bomb test); printed after each run, so the
    # first run (a small photo) gives the cost of torch, the model and the command alone.
    "for src, out, *extra in (a.split('|') for a in sys.argv[1:]):\n"
    "    assert main(['predict', src, '--out', out, '--preset', 'default', *extra]) == 0, src\n"
    "    print('peak_mb', src, int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) // 1024)\n"
)


def _blocky(width: int, height: int) -> Image.Image:
    """A photo-sized image made in about a second: random 120 x 90 pixels blown up."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).resize((width, height), Image.Resampling.NEAREST)


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    """Peak memory (MB) of one child process predicting, in turn, a 640 x 480 photo, a
    12000 x 9000 JPEG (108 megapixels: above the pixel limit unless drafted) and a
    9000 x 6667 PNG (60 megapixels: no draft for PNGs), and its output folder."""
    tmp = tmp_path_factory.mktemp("large")
    for name, img, kw in (
        ("small/photo.jpg", Image.new("RGB", (640, 480), (90, 120, 150)), {}),
        ("jpeg/huge.jpg", _blocky(12000, 9000), {"quality": 85}),
        ("png/huge.png", _blocky(9000, 6667), {"compress_level": 1}),
    ):
        (tmp / name).parent.mkdir()
        img.save(tmp / name, **kw)
    runs = [f"{tmp / 'small'}|{tmp / 'out_small'}", f"{tmp / 'jpeg'}|{tmp / 'out_jpeg'}", f"{tmp / 'png'}|{tmp / 'out_png'}|--no-save"]
    out = subprocess.run([sys.executable, "-c", PEAK_CODE, *runs], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    found = dict(line.split()[1:] for line in out.stdout.splitlines() if line.startswith("peak_mb"))
    return {Path(src).name: int(mb) for src, mb in found.items()}, tmp


def test_a_12000_x_9000_jpeg_decodes_drafted_in_little_memory(peaks):
    """Decoded whole it would take 324 MB of pixels and 1.3 GB as floats (3.5 GB peak
    measured); drafted to 1/8 it costs next to nothing beyond the command itself (whose
    torch and torchvision alone take about 700 MB), and its boxes refer to the file."""
    peak, tmp = peaks
    assert peak["jpeg"] - peak["small"] < 100, peak
    assert peak["jpeg"] < 1000, peak
    data = json.loads((tmp / "out_jpeg" / "detections.json").read_text())
    assert [(i["width"], i["height"]) for i in data["images"]] == [(12000, 9000)]
    with Image.open(tmp / "out_jpeg" / "huge.jpg") as drawn:  # the annotated copy: the drafted size
        assert drawn.size == (1500, 1125)


def test_a_12000_x_9000_jpeg_predicts_under_700_mb_with_an_onnx_model(peaks, tmp_path_factory):
    """The ONNX path needs neither torchvision nor the model's weights in torch: the whole
    command, torch's import included, stays under 700 MB."""
    _, tmp = peaks
    _, onnx_path = shared_export(tmp_path_factory)
    code = PEAK_CODE.replace("'--preset', 'default'", f"'--model', {str(onnx_path)!r}, '--no-save'")
    out = subprocess.run([sys.executable, "-c", code, f"{tmp / 'jpeg'}|{tmp / 'out_onnx'}"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    peak = int(next(line.split()[2] for line in out.stdout.splitlines() if line.startswith("peak_mb")))
    assert peak < 700, peak
    data = json.loads((tmp / "out_onnx" / "detections.json").read_text())
    assert [(i["width"], i["height"]) for i in data["images"]] == [(12000, 9000)]


def test_a_60_megapixel_png_predicts_under_1_5_gb(peaks):
    peak, tmp = peaks
    assert peak["png"] < 1500, peak
    data = json.loads((tmp / "out_png" / "detections.json").read_text())
    assert [(i["width"], i["height"]) for i in data["images"]] == [(9000, 6667)]


def test_draft_keeps_the_longer_side_at_least_the_input_size():
    assert draft_request(12000, 9000, 320) == (320, 240)  # Pillow then picks 1/8: 1500 x 1125
    assert draft_request(9000, 12000, 1024) == (768, 1024)  # 1/8: 1125 x 1500, still >= 1024
    assert draft_request(6000, 4000, 320) is None  # 24 megapixels: decoded whole
    assert draft_request(30000, 1000, 20000) is None  # no scale keeps 20000


def test_letterbox_in_bands_matches_the_single_resize():
    """A large uint8 image is widened to float a band at a time: same pixels to the bit."""
    img = torch.randint(0, 256, (2300, 2000, 3), dtype=torch.uint8).permute(2, 0, 1)  # channels-last, like read_image
    assert 2300 * 2000 > STRIP_PIXELS
    banded = resize(img, 320, 278)
    whole = torch.nn.functional.interpolate(img.float()[None] / 255, size=(320, 278), mode="bilinear", antialias=True)[0]
    assert torch.equal(banded, whole)


class BrightBoxModel(torch.nn.Module):
    """Stands in for a network that finds the one bright rectangle exactly: its box, in the
    pixels of whatever tensor it is given (the drafted one for a large JPEG)."""

    class_names, category_ids = ["thing"], [1]
    cfg = SimpleNamespace(input_size=320, postprocess=PostprocessConfig())

    def predict(self, images, post=None):
        out = []
        for img in images:
            ys, xs = torch.nonzero(img[0] > 127, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append(SimpleNamespace(boxes=box, scores=torch.tensor([0.9]), labels=torch.tensor([0])))
        return out


def test_drafted_boxes_come_back_in_the_files_pixels(tmp_path):
    """A 6400 x 4800 JPEG decodes at 1/8 (800 x 600): the box found there comes back in the
    file's pixels, within one 8-pixel DCT block of the box found on the whole decode, in
    the API, the JSON and the YOLO txt; the annotated copy has it where the drafted pixels are."""
    rect = (1001, 1203, 4005, 3507)
    img = Image.new("RGB", (6400, 4800))
    img.paste((255, 255, 255), rect)
    path = tmp_path / "in" / "big.jpg"
    path.parent.mkdir()
    img.save(path, quality=90)
    det = Detector(BrightBoxModel())
    drafted, whole = det.predict(path), det.predict(read_image(path))
    assert drafted.image_size == whole.image_size == (4800, 6400)
    np.testing.assert_allclose(whole.boxes[0], rect, atol=1)
    np.testing.assert_allclose(drafted.boxes[0], whole.boxes[0], atol=8)
    cfg = PredictConfig(out=str(tmp_path / "out"), save_txt=True)
    predict(det, Sources(images=[path]), cfg)
    data = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (6400, 4800)
    x, y, w, h = data["annotations"][0]["bbox"]
    np.testing.assert_allclose([x, y, x + w, y + h], rect, atol=8)
    cx, cy, bw, bh = map(float, (tmp_path / "out" / "labels" / "big.txt").read_text().split()[1:])
    np.testing.assert_allclose([cx * 6400, cy * 4800, bw * 6400, bh * 4800], [2503, 2355, 3004, 2304], atol=8)
    drawn = np.asarray(Image.open(tmp_path / "out" / "big.jpg"))
    assert drawn.shape == (600, 800, 3)
    top = round(1203 / 8)  # the box's top edge on the drafted pixels
    assert np.abs(drawn[top, 300].astype(int) - class_color(0)).max() < 60
