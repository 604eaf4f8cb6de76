"""`retinanet train` end to end, in-process: the run folder holds what the docs promise."""

import json

from PIL import Image
from test_distributed import write_subset

from retinanet.cli import main


def test_train_writes_checkpoints_curves_evaluation_and_predictions(tmp_path, capsys):
    spec = write_subset(tmp_path, n=8)
    out = tmp_path / "runs"
    args = ["train", "--data", str(spec), "model.input_size=128", "epochs=2", "batch=4", "data.workers=0", "data.val_split=train"]
    assert main([*args, f"train.out={out}", "--name", "e2e", "--no-progress"]) == 0
    run = out / "e2e"
    for name in ("config.yaml", "last.pt", "best.pt", "results.csv", "training_curves.png", "val/metrics.json", "predict/detections.json"):
        assert (run / name).is_file(), name
    rows = (run / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,")  # header + 2 epochs
    metrics = json.loads((run / "val" / "metrics.json").read_text())["metrics"]
    assert set(metrics) >= {"AP", "AP50", "AR100"}
    Image.open(run / "training_curves.png").verify()
    assert "best: AP" in capsys.readouterr().out


def test_unknown_key_is_one_clear_line(capsys):
    assert main(["train", "train.lrr=0.1"]) == 1
    err = capsys.readouterr().err
    assert "train.lrr" in err and "valid keys under train" in err and "lr" in err


def test_real_data_trains_at_the_size_its_boxes_need_unless_the_user_says(tmp_path):
    from retinanet.train import run_config

    data = "data.source=some/dataset"
    assert run_config("default", None, [data]).model.input_size == "auto"
    assert run_config("default", None, [data, "model.input_size=416"]).model.input_size == 416
    assert run_config("full", None, [data]).model.input_size == 640  # a preset's own size
    demo = run_config("default", None, [])
    assert demo.model.input_size == 320 and demo.train.epochs == 12  # the synthetic demo: fast
    (tmp_path / "run.yaml").write_text("model:\n  input_size: 512\n")
    assert run_config("default", str(tmp_path / "run.yaml"), [data]).model.input_size == 512
    (tmp_path / "other.yaml").write_text("train:\n  epochs: 3\n")
    assert run_config("default", str(tmp_path / "other.yaml"), [data]).model.input_size == "auto"
