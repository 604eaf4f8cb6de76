from retinanet.cli import main


def test_predict_in_process(coco128, capsys):
    img = coco128 / "train2017" / "000000000009.jpg"
    assert main(["predict", str(img), "--conf", "0.0"]) == 0
    out = capsys.readouterr().out
    assert "000000000009.jpg: 100 detections" in out


def test_user_error_is_one_clear_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.jpg")]) == 1
    err = capsys.readouterr().err
    assert "missing.jpg" in err and "not found" in err and "Traceback" not in err
