"""Decompression bombs: an image above the pixel limit is refused from its header, before
a pixel is decoded, by the reader, the data checks and predict."""

import subprocess
import sys

import pytest
from PIL import Image

from retinanet.data.images import ImageError, image_info, max_pixels, read_image

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
        "rc = main(['predict', sys.argv[1], '--output', sys.argv[2], '--preset', 'default'])\n"
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
