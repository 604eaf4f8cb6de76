"""JPEGs that end early, made in tmp_path from real raccoon photos: a cut of the last
bytes (a sliver of the last block row lost) is used and reported as fixed everywhere a
user looks; a cut to 60% of the bytes (a third of the rows lost) stays an error naming
the file; a progressive file is never guessed at."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageFile

from retinanet.cli import main
from retinanet.data import DataError, load_dataset
from retinanet.data.images import TRUNCATED_ROWS_LIMIT, ImageError, image_info, read_image
from retinanet.data.loader import AugmentedDataset
from retinanet.run_folder import RunFolder

NAMES = ("raccoon-1.jpg", "raccoon-2.jpg", "raccoon-3.jpg")
CUT = "raccoon-2.jpg"


@pytest.fixture
def voc(tmp_path, raccoon) -> Path:
    """Three raccoon photos with their annotations in a VOC folder."""
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for name in NAMES:
        shutil.copy(raccoon / "annotations" / name.replace(".jpg", ".xml"), root / "Annotations")
        shutil.copy(raccoon / "images" / name, root / "JPEGImages")
    return root


def cut(path: Path, keep: int) -> Path:
    """Keep the first ``keep`` bytes of ``path`` (negative: all but the last -keep)."""
    path.write_bytes(path.read_bytes()[:keep])
    return path


def pillow_refuses(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
    except OSError as e:
        return "truncated" in str(e)
    return False


def test_missing_the_last_bytes_is_used_and_reported_fixed(voc, raccoon):
    path = cut(voc / "JPEGImages" / CUT, -20)
    assert pillow_refuses(path)
    info = image_info(path, decode=True)
    assert info.missing_rows is not None and info.missing_rows <= TRUNCATED_ROWS_LIMIT
    whole = np.asarray(Image.open(raccoon / "images" / CUT).convert("RGB"))
    pixels = read_image(path).permute(1, 2, 0).numpy()
    assert pixels.shape == whole.shape
    assert np.array_equal(pixels[:-16], whole[:-16])  # only the last 16-row block band differs
    ds = load_dataset(voc, "all", progress=False)  # drop_bad=False, as training loads it
    assert len(ds) == 3 and ds.report.ok
    [issue] = ds.report.issues
    assert (issue.level, issue.kind, issue.file) == ("fixed", "truncated image", str(path))
    assert issue.reason.startswith(f"{CUT}: the file ends early") and "used" in issue.reason
    text = ds.report.to_text()
    assert "fixed - truncated image: 1" in text and str(path) in text
    index = [r.image_path.name for r in ds.records].index(CUT)
    image, target = AugmentedDataset(ds, 320, train=True)[index]  # what the training loader decodes
    assert image.shape == (3, 320, 320) and len(target["boxes"]) >= 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # measured per image, never switched on for all


def test_cut_to_60_percent_is_an_error_naming_the_file(voc):
    path = voc / "JPEGImages" / CUT
    cut(path, int(path.stat().st_size * 0.6))
    with pytest.raises(ImageError, match=rf"{CUT}: cannot decode image \(truncated JPEG: \d+\.\d% of its rows are missing, more than 1%\)"):
        read_image(path)
    with pytest.raises(ImageError, match="truncated JPEG"):
        image_info(path, decode=True)
    with pytest.raises(DataError) as e:
        load_dataset(voc, "all", progress=False)
    assert CUT in str(e.value) and "drop_bad" in str(e.value)
    [issue] = e.value.report.issues
    assert (issue.level, issue.kind, issue.file) == ("error", "unreadable image", str(path))
    assert len(load_dataset(voc, "all", drop_bad=True, progress=False)) == 2


def test_rows_missing_agree_with_pillows_own_truncated_decode(voc, monkeypatch):
    """The 1/8-scale measure against Pillow's process-wide LOAD_TRUNCATED_IMAGES at full
    size (switched on here only, by monkeypatch): within two 16-row block bands."""
    path = voc / "JPEGImages" / CUT
    cut(path, int(path.stat().st_size * 0.6))
    with pytest.raises(ImageError) as e:
        read_image(path)
    ours = float(str(e.value).split("truncated JPEG: ")[1].split("%")[0]) / 100
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    grey = (pixels.reshape(len(pixels), -1) == 128).all(axis=1)
    theirs = (len(grey) - 1 - np.flatnonzero(~grey)[-1]) / len(grey)
    assert 0.2 < theirs < 0.8 and abs(ours - theirs) <= 32 / len(grey)


def test_a_cut_progressive_jpeg_is_an_error(tmp_path, raccoon):
    buf = io.BytesIO()
    Image.open(raccoon / "images" / CUT).save(buf, "JPEG", quality=90, progressive=True)
    path = tmp_path / "progressive.jpg"
    path.write_bytes(buf.getvalue()[:-20])
    assert pillow_refuses(path)
    with pytest.raises(ImageError, match="progressive.jpg: cannot decode image \\(truncated progressive JPEG"):
        read_image(path)


def test_check_data_prints_the_fix_and_passes(voc, tmp_path, capsys):
    path = cut(voc / "JPEGImages" / CUT, -20)
    assert main(["check-data", str(voc), "--quiet", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "fixed - truncated image: 1" in out and f"{path}: {CUT}: the file ends early" in out
    assert out.rstrip().endswith("OK")
    assert "truncated image" in (tmp_path / "r" / "problems.json").read_text()


def test_the_training_data_report_shows_the_fix(voc, tmp_path, capsys):
    path = cut(voc / "JPEGImages" / CUT, -20)
    ds = load_dataset(voc, "all", progress=False)
    coverage = SimpleNamespace(lines=[], after=SimpleNamespace(classes=[]))
    RunFolder(tmp_path / "run").open()
    RunFolder(tmp_path / "run").report_data(coverage, ds, None)
    assert f"data train: fixed: {path}: {CUT}: the file ends early" in capsys.readouterr().out
    assert "fixed - truncated image: 1" in (tmp_path / "run" / "data_train.txt").read_text()


def test_downloaded_bytes_are_decoded_and_repaired_as_a_file_is(voc, raccoon):
    from retinanet.sources import decode_bytes

    path = cut(voc / "JPEGImages" / CUT, -20)
    image, size = decode_bytes(path.read_bytes(), "http://127.0.0.1/x.jpg")
    assert torch_equal(image, read_image(path)) and size == tuple(read_image(path).shape[-2:])
    with pytest.raises(ImageError, match=r"^http://127\.0\.0\.1/y\.jpg: cannot decode image"):
        decode_bytes(b"not a picture", "http://127.0.0.1/y.jpg")


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
